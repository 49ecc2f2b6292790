"""Rewards: rule-based for reasoning (DeepSeek-R1 §2.2: rules, since a neural reward model gets hacked),
and trained reward models for general prompts (R1 stage 4, `model`).

The contract (TRL's, spelled out in `rewards.base`): a reward is a plain callable

    f(completions: list[str], *, prompts=None, completion_lengths=None, **columns) -> list[float | None]

Dataset columns arrive as keyword arguments, lists aligned with `completions` (`answer=`,
`tests=`, `level=`, ...), and so do the reward's own settings (`rewards.params.<name>`). A
reward must accept and ignore keywords it does not use (`**kwargs`). `None` means "not
applicable" (the reference answer cannot be parsed, say): it is never counted as a reward.
Rewards here also give the reason for each score (`.scores(...)`, used by `thinkrl score`).

Registered:

| name | what | module |
| --- | --- | --- |
| `accuracy` | math answer equivalent to the reference (math-verify, time-limited workers) | `math` |
| `code` | pass fraction (or all-or-nothing) of test cases, run in the sandbox | `code` |
| `format` | strict `<think>…</think> <answer>…</answer>` | `format` |
| `format_lenient` | the four tags once each, in order, text around allowed | `format` |
| `tag_count` | 0.25 per tag present once and in order | `format` |
| `language` | share of chain-of-thought words in the target language (R1 stage 2) | `language` |
| `readability` | the readable form: reasoning, a summary, the answer, no stray tokens or repeated steps | `readability` |
| `overlong` | DAPO's soft overlong punishment | `length` |
| `cosine_length` | cosine length scaling (Yeo et al. 2025) | `length` |
| `repetition` | n-gram repetition penalty (Yeo et al. 2025) | `repetition` |
| `reward_model` | a trained reward model's score (`thinkrl rm`; R1 stage 4, general prompts) | `model` |
| `helpfulness` | a reward model on the final summary only (R1 stage 4) | `model` |
| `harmlessness` | a reward model on the whole response, reasoning included (R1 stage 4) | `model` |
| `column_steps` | step reward: each column equation of the embedded task checked (process supervision) | `column_steps` |
| `process_model` | step reward: p(step right) under a process reward model (`thinkrl rm`) | `process_model` |

Rewards are chosen and weighted by name in the config (`rewards.weights`), or by an import
path `package.module:function` for a user's own. Step rewards (a score per reasoning step, for
`objective.advantage: process`) follow their own contract (`rewards.steps`) and are named in
`rewards.step_weights`.
"""

from __future__ import annotations

from typing import Callable

from .code import code_reward
from .column_steps import column_steps_reward
from .format import format_lenient_reward, format_reward, tag_count_reward
from .language import language_consistency_reward
from .length import cosine_length_reward, overlong_penalty_reward
from .math import accuracy_reward
from .model import harmlessness_reward, helpfulness_reward, reward_model_reward
from .process_model import process_model_reward
from .readability import readability_reward
from .repetition import repetition_penalty_reward
from .user import import_reward_module

Reward = Callable[..., list]

REWARDS: dict[str, Reward] = {
    "accuracy": accuracy_reward,
    "code": code_reward,
    "format": format_reward,
    "format_lenient": format_lenient_reward,
    "tag_count": tag_count_reward,
    "language": language_consistency_reward,
    "readability": readability_reward,
    "overlong": overlong_penalty_reward,
    "cosine_length": cosine_length_reward,
    "repetition": repetition_penalty_reward,
    "reward_model": reward_model_reward,
    "helpfulness": helpfulness_reward,
    "harmlessness": harmlessness_reward,
    "column_steps": column_steps_reward,
    "process_model": process_model_reward,
}


def get_reward(name_or_path: str, import_timeout_s: float | None = None) -> Reward:
    """A registered reward by name (`"accuracy"`), or a user's callable by import path
    (`"package.module:function"`). ValueError, naming the registered rewards, otherwise.
    With `import_timeout_s`, a user's module is first imported in a throw-away interpreter
    within that many seconds (`rewards.user`): one that blocks or exits at import is an error."""
    name = str(name_or_path).strip()
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        if not module or not attr:
            raise ValueError(f"bad reward import path {name!r}; expected package.module:function")
        fn = getattr(import_reward_module(module, name, import_timeout_s), attr, None)
        if fn is None:
            raise ValueError(f"cannot import reward {name!r}: module {module!r} has no attribute {attr!r}")
        if not callable(fn):
            raise ValueError(f"reward {name!r} is not callable")
        return fn
    raise ValueError(f"unknown reward {name!r}; registered: {', '.join(sorted(REWARDS))} "
                     f"(or give an import path package.module:function)")
