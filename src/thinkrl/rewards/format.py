"""The R1-Zero format reward: reasoning inside <think></think>, then the answer inside
<answer></answer> (DeepSeek-R1 §2.2.2)."""

from __future__ import annotations

import re

# the whole completion: one think block, then one non-empty answer block, nothing after it
_STRICT = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)


def format_reward(completions: list[str], **kwargs) -> list[float]:
    """1.0 when the completion is exactly `<think>…</think> <answer>…</answer>` (whitespace
    allowed around and between the blocks, which completions that follow the prompt's
    "Assistant:" usually start with), with one tag of each kind and a non-empty answer;
    else 0.0."""
    out = []
    for c in completions:
        m = _STRICT.fullmatch(c)
        ok = (m is not None and m.group("answer").strip() != ""
              and all(c.count(tag) == 1 for tag in ("<think>", "</think>", "<answer>", "</answer>")))
        out.append(1.0 if ok else 0.0)
    return out
