"""Readability of a response (DeepSeek-R1 §2.3.1: R1-Zero's answers had "poor readability",
and the cold-start data was written in a "readable pattern": a reasoning process, then a
summary). The rule, checked in this order, names the first problem it finds:

- `no reasoning`: not exactly one `<think>…</think>` block, or nothing but blanks in it;
- `no answer`: not exactly one `<answer>…</answer>` block after the reasoning;
- `text before the reasoning`: anything but blanks before `<think>`;
- `text after the answer`: anything but blanks after `</answer>`;
- `no summary`: nothing between `</think>` and `<answer>` (the reader gets a bare answer,
  with no sentence that says what the reasoning found);
- `stray token` in the reasoning or the summary: a run of two or more of the same symbol
  among `. # ~ ; * _ | ^ `` ` `` (`..`, `##`, `~~`), a special-token text (`<|…|>`), a
  leftover tag (`<think>`, `</answer>` inside the reasoning, ...), or U+FFFD (a broken
  character);
- `repeated step`: a step written twice in a row, where a step is a line of the reasoning,
  or an equation (a run of non-blank characters holding `=`): `4+8=12 4+8=12`.

    readability(completions) -> [1.0 readable | 0.0 not], each with its reason (`.scores`)

A response in the readable form ` <think>7+5=12 carry 4+8+1=13</think> So the answer is 132.
<answer>132</answer>` scores 1.0. The rule does not judge the language of the reasoning (the
`language` reward does) nor whether the answer is right (`accuracy` does).
"""

from __future__ import annotations

import re

from .base import Scored, explained

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_STRAY = re.compile(r"([.#~;*_|^`])\1+|<\|[^|>]*\|>|\ufffd|</?(?:think|answer)>")
_REPEATED_EQUATION = re.compile(r"(?<!\S)(\S*=\S*)\s+\1(?!\S)")


def readability_problem(text: str) -> str:
    """The first problem the rule finds (see the module docstring), "" for a readable response."""
    if text.count("<think>") != 1 or text.count("</think>") != 1:
        return "no reasoning"
    head, rest = text.split("<think>", 1)
    think, after = rest.split("</think>", 1) if "</think>" in rest else ("", "")
    if not think.strip():
        return "no reasoning"
    if after.count("<answer>") != 1 or after.count("</answer>") != 1 or after.index("</answer>") < after.index("<answer>"):
        return "no answer"
    summary, tail = after.split("<answer>", 1)
    answer, tail = tail.split("</answer>", 1)
    if head.strip():
        return "text before the reasoning"
    if tail.strip():
        return "text after the answer"
    if not summary.strip():
        return "no summary"
    for part in (summary, answer):
        m = _STRAY.search(part)
        if m:
            return f"stray token {m.group(0)!r}"
    return reasoning_problem(think)


def reasoning_problem(think: str) -> str:
    """The rule's checks of the reasoning itself: a stray token or a repeated step ("" if none)."""
    m = _STRAY.search(think)
    if m:
        return f"stray token {m.group(0)!r}"
    lines = [ln.strip() for ln in think.splitlines() if ln.strip()]
    if any(a == b for a, b in zip(lines, lines[1:])):
        return "repeated step (a line)"
    m = _REPEATED_EQUATION.search(think)
    if m:
        return f"repeated step {m.group(1)!r}"
    return ""


@explained
def readability_reward(completions: list[str], **kwargs) -> list[Scored]:
    """1.0 for a response the readability rule accepts, 0.0 with the problem found."""
    out = []
    for c in completions:
        problem = readability_problem(c)
        out.append(Scored(0.0 if problem else 1.0, problem))
    return out
