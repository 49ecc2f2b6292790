"""Math accuracy: the final answer of a completion against the reference, equivalence by
math-verify (fractions, LaTeX, sets, intervals, ...).

The final answer is the content of the last <answer>…</answer> block, else of the last
\\boxed{…} (`source` chooses). References may be a bare answer, a GSM8K solution ending in
`#### 72`, or a worked solution with `\\boxed{…}` or a closing `The answer is: …`.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction

log = logging.getLogger("thinkrl.rewards")

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?|[-+]?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{…} or \\fbox{…}, braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1: j]
    return None


SOURCES = ("answer", "boxed", "answer_or_boxed", "final")


def _closing_answer(text: str) -> str | None:
    m = re.search(r"The answer is:?\s*(.+?)\s*$", text, re.DOTALL)
    return m.group(1).strip().rstrip(".") if m else None


def extract_answer(completion: str, source: str = "answer_or_boxed") -> str | None:
    """The final answer of a completion; None when there is none (or it is empty).

    source: "answer" (last <answer> block), "boxed" (last \\boxed{}), "answer_or_boxed"
    (the first that exists, in that order; the training default), or "final" (those, then a
    closing "The answer is: X", the convention of MATH-style worked solutions)."""
    if source not in SOURCES:
        raise ValueError(f"unknown answer source {source!r}; use one of {', '.join(SOURCES)}")
    found = None
    if source in ("answer", "answer_or_boxed", "final"):
        tags = _ANSWER_TAG.findall(completion)
        found = tags[-1] if tags else None
    if found is None and source in ("boxed", "answer_or_boxed", "final"):
        found = last_boxed(completion)
    if found is None and source == "final":
        found = _closing_answer(completion)
    found = found.strip() if found is not None else None
    return found or None


def reference_answer(ref: str) -> str | None:
    """The final answer inside a reference: `#### N` (GSM8K), the last \\boxed{}, a closing
    `The answer is: X`, or the reference itself."""
    ref = str(ref).strip()
    if "####" in ref:
        return ref.rsplit("####", 1)[1].strip().replace(",", "") or None
    boxed = last_boxed(ref)
    if boxed is not None:
        return boxed.strip() or None
    return _closing_answer(ref) or ref or None


def _plain_number(s: str) -> Fraction | None:
    s = s.strip().rstrip(".").strip("$ ")
    if not _NUMBER.fullmatch(s):
        return None
    return Fraction(s.replace(",", ""))


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def is_equivalent(gold: str, pred: str) -> bool:
    """math-verify equivalence; plain numbers (the common case) compared exactly first."""
    a, b = _plain_number(gold), _plain_number(pred)
    if a is not None and b is not None:
        return a == b
    from math_verify import parse, verify

    # math-verify's time limits use SIGALRM, which exists only on the main thread; elsewhere
    # they are turned off (a worker pool with hard per-item limits is the robust answer).
    t = 5 if _on_main_thread() else None
    g = parse(f"${gold}$", parsing_timeout=t)
    p = parse(f"${pred}$", parsing_timeout=t)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=t))


def parses(ref: str) -> bool:
    ans = reference_answer(ref)
    if ans is None:
        return False
    if _plain_number(ans) is not None:
        return True
    from math_verify import parse

    parsed = parse(f"${ans}$", parsing_timeout=5 if _on_main_thread() else None)
    return any(not isinstance(x, str) for x in parsed)  # a bare string is math-verify's fallback


def accuracy_reward(completions: list[str], answer: list[str], source: str = "answer_or_boxed", **kwargs) -> list[float | None]:
    """1.0 if the completion's final answer is equivalent to the reference, 0.0 if not or
    if it gave none; None when the reference itself cannot be parsed."""
    out: list[float | None] = []
    for completion, ref in zip(completions, answer):
        gold = reference_answer(ref)
        if gold is None or not parses(ref):
            out.append(None)
            continue
        pred = extract_answer(completion, source)
        if pred is None:
            out.append(0.0)
            continue
        try:
            out.append(1.0 if is_equivalent(gold, pred) else 0.0)
        except Exception as e:  # a pathological answer scores 0, never stops training
            log.warning("verification failed (%s: %s) for answer %r", type(e).__name__, e, pred[:200])
            out.append(0.0)
    return out
