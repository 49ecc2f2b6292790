"""Format rewards: reasoning inside <think></think>, then the answer inside <answer></answer>
(DeepSeek-R1 §2.2.2, the R1-Zero template, docs/R1-PIPELINE.md §R1-Zero).

Three degrees of strictness, all built on the four tags `<think>`, `</think>`, `<answer>`,
`</answer>`:

- `format_reward` (strict, the R1-Zero reward): the whole completion is the two blocks and
  nothing else (whitespace aside). 1.0 or 0.0.
- `format_lenient_reward`: the two blocks in that order, each tag exactly once and a
  non-empty answer, with any text allowed before, between and after them. 1.0 or 0.0.
- `tag_count_reward`: partial credit, 0.25 per tag that appears exactly once and in its
  place, so a policy that gets part of the format right already sees a gradient.
"""

from __future__ import annotations

import re

from .base import Scored, explained

TAGS = ("<think>", "</think>", "<answer>", "</answer>")

# the whole completion: one think block, then one non-empty answer block, nothing after it
_STRICT = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)


def _counts(completion: str) -> dict[str, int]:
    return {tag: completion.count(tag) for tag in TAGS}


def _tag_problem(counts: dict[str, int]) -> str:
    """Why the tags are not each present exactly once ("" when they are)."""
    missing = [t for t in TAGS if counts[t] == 0]
    repeated = [f"{t} ×{counts[t]}" for t in TAGS if counts[t] > 1]
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing))
    if repeated:
        parts.append("repeated " + ", ".join(repeated))
    return "; ".join(parts)


def _in_order(completion: str) -> bool:
    """With each tag present once: whether they come as <think> </think> <answer> </answer>."""
    pos = [completion.find(t) for t in TAGS]
    return pos == sorted(pos)


def _answer_text(completion: str) -> str:
    """The text between the (single) <answer> and </answer>."""
    start = completion.find("<answer>") + len("<answer>")
    return completion[start:completion.find("</answer>")]


@explained
def format_reward(completions: list[str], **kwargs) -> list[Scored]:
    """1.0 when the completion is exactly `<think>…</think> <answer>…</answer>` (whitespace
    allowed around and between the blocks, which completions that follow the prompt's
    "Assistant:" usually start with), with one tag of each kind and a non-empty answer;
    else 0.0. The think block may be empty."""
    out = []
    for c in completions:
        counts = _counts(c)
        m = _STRICT.fullmatch(c)
        ok = (m is not None and m.group("answer").strip() != ""
              and all(n == 1 for n in counts.values()))
        if ok:
            out.append(Scored(1.0))
            continue
        # the value is decided above; the rest only says why it is 0
        reason = _tag_problem(counts)
        if not reason:
            if not _in_order(c):
                reason = "tags out of order (want <think>…</think> then <answer>…</answer>)"
            elif not _answer_text(c).strip():
                reason = "empty answer"
            elif c[:c.find("<think>")].strip():
                reason = "text before <think>"
            elif c[c.find("</think>") + len("</think>"):c.find("<answer>")].strip():
                reason = "text between </think> and <answer>"
            else:
                reason = "text after </answer>"
        out.append(Scored(0.0, reason))
    return out


@explained
def format_lenient_reward(completions: list[str], **kwargs) -> list[Scored]:
    """1.0 when a think block is followed, somewhere later, by a non-empty answer block;
    else 0.0.

    Precisely: each of `<think>`, `</think>`, `<answer>`, `</answer>` appears exactly once,
    in that order, and the answer's text is not blank. Unlike `format_reward`, any text may
    come before `<think>`, between `</think>` and `<answer>`, and after `</answer>`
    (a preamble, a summary, an end-of-turn marker). The think block may be empty."""
    out = []
    for c in completions:
        reason = _tag_problem(_counts(c))
        if not reason and not _in_order(c):
            reason = "tags out of order (want <think>…</think> then <answer>…</answer>)"
        if not reason and not _answer_text(c).strip():
            reason = "empty answer"
        out.append(Scored(0.0, reason) if reason else Scored(1.0))
    return out


@explained
def tag_count_reward(completions: list[str], **kwargs) -> list[Scored]:
    """Partial credit for the format: 0.25 for each of `<think>`, `</think>`, `<answer>`,
    `</answer>` that (a) appears exactly once and (b) comes after every tag that precedes it
    in that order and also appears exactly once. Tags absent or repeated earn nothing and
    do not constrain the others. Text around the tags and the blocks' contents are not
    looked at (`format_lenient_reward` checks for a non-empty answer).

    Examples: the full format 1.0; `x </think> <answer>1</answer>` (the opening <think> left
    in the prompt) 0.75; `<answer>1</answer> <think>a</think>` 0.5 (the think block is in
    order, the answer tags come before it); two answer blocks 0.5."""
    out = []
    for c in completions:
        counts = _counts(c)
        once = [t for t in TAGS if counts[t] == 1]
        pos = {t: c.find(t) for t in once}
        earned, problems = [], []
        for i, tag in enumerate(TAGS):
            if counts[tag] != 1:
                problems.append(f"missing {tag}" if counts[tag] == 0 else f"{tag} ×{counts[tag]}")
                continue
            before = [t for t in TAGS[:i] if t in pos and pos[t] > pos[tag]]
            if before:
                problems.append(f"{tag} before {before[0]}")
                continue
            earned.append(tag)
        value = 0.25 * len(earned)
        out.append(Scored(value, "; ".join(problems)))
    return out
