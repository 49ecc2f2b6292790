"""Rule-based rewards (DeepSeek-R1 §2.2: rules, never a neural reward model, which gets hacked).

The contract (TRL's): a reward is a plain callable

    f(completions: list[str], **columns) -> list[float | None]

Dataset columns arrive as keyword arguments, lists aligned with `completions` (`answer=`,
`level=`, ...; `prompts=` is the question text). A reward must accept and ignore columns
it does not use (`**kwargs`). `None` means "not applicable" (the reference answer cannot be
parsed, say): it is never counted as a reward.

Registered here: `accuracy` (math answers against the reference by math-verify, see
`rewards.math`) and `format` (`<think>…</think> <answer>…</answer>`, see `rewards.format`).
Rewards are chosen and weighted by name in the config (`rewards.weights`), or by an import
path `package.module:function` for a user's own.
"""

from __future__ import annotations

import importlib
from typing import Callable

from .format import format_reward
from .math import accuracy_reward

Reward = Callable[..., list]

REWARDS: dict[str, Reward] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
}


def get_reward(name_or_path: str) -> Reward:
    """A registered reward by name (`"accuracy"`), or a user's callable by import path
    (`"package.module:function"`). ValueError, naming the registered rewards, otherwise."""
    name = str(name_or_path).strip()
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        if not module or not attr:
            raise ValueError(f"bad reward import path {name!r}; expected package.module:function")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot import reward {name!r}: {e}") from None
        if not callable(fn):
            raise ValueError(f"reward {name!r} is not callable")
        return fn
    raise ValueError(f"unknown reward {name!r}; registered: {', '.join(sorted(REWARDS))} "
                     f"(or give an import path package.module:function)")
