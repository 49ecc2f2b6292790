"""Math accuracy: the final answer of a completion checked against the reference answer,
equivalence decided by math-verify (numbers, fractions, LaTeX, sets, intervals, tuples, ...).

Where the final answer is looked for (`extract_answer`):

- Reasoning does not count. Text inside <think>…</think> is skipped: only what follows the
  last </think> is searched (or the whole completion when it has no think tags; a <think>
  that is never closed means the completion is all reasoning and has no final answer). A
  value boxed or tagged while thinking is not a final answer.
- `source="answer"`: the content of the last <answer>…</answer> block.
- `source="boxed"`: the content of the last \\boxed{…} / \\fbox{…} (braces balanced).
- `source="answer_or_boxed"` (the default, used in training): the answer block if there is
  one, else the last box.
- `source="final"`: as "answer_or_boxed", then falling back to a closing `The answer is: X`
  (the convention of MATH-style worked solutions and of models tuned on them).

The reference (`reference_answer`) may be a bare answer, a GSM8K solution ending in
`#### 72`, or a worked solution with a \\boxed{…} or a closing `The answer is: …`.

Scores: 1.0 equivalent, 0.0 not equivalent / no final answer / verification failed,
None when the reference itself cannot be parsed (not applicable, never a reward).
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction
from functools import lru_cache

log = logging.getLogger("thinkrl.rewards")

SOURCES = ("answer", "boxed", "answer_or_boxed", "final")

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_CLOSING = re.compile(r"the answer is\s*:?", re.IGNORECASE)
# a plain number: optional sign, digits (or comma-grouped thousands), optional decimals
_INT = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)"
_PLAIN_NUMBER = re.compile(rf"(?P<int>{_INT})(?:\.(?P<frac>\d*))?|[-+]?\.(?P<frac2>\d+)")
_COMMA_NUMBER = re.compile(rf"{_INT}(?:\.\d+)?")
# math-verify compares floats after rounding to this many decimals; the fast path keeps out
# of its way by handing longer decimals to math-verify
_FLOAT_ROUNDING = 6
_TIMEOUT_S = 5


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{…} or \\fbox{…}, braces balanced; None if there is none
    or it is never closed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    name = "\\boxed" if text.startswith("\\boxed", start) else "\\fbox"
    rest = text[start + len(name):]
    i = len(rest) - len(rest.lstrip(" "))
    if not rest[i:].startswith("{"):
        m = re.match(r" +([^\s$]+)", rest)  # `\boxed 5`: the next token
        return m.group(1) if m else None
    depth = 0
    for j in range(i, len(rest)):
        if rest[j] == "{":
            depth += 1
        elif rest[j] == "}":
            depth -= 1
            if depth == 0:
                return rest[i + 1: j]
    return None


def _closing_answer(text: str) -> str | None:
    """X in the last `The answer is: X` (to the end of that line)."""
    matches = list(_CLOSING.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():].strip().split("\n", 1)[0].strip()
    return rest.rstrip(".").strip() or None


def _outside_reasoning(completion: str) -> str:
    """The part of a completion that is not reasoning: after the last </think>; nothing if a
    <think> is never closed; everything if there are no think tags."""
    close = completion.rfind("</think>")
    if close >= 0:
        return completion[close + len("</think>"):]
    if "<think>" in completion:
        return ""
    return completion


def extract_answer(completion: str, source: str = "answer_or_boxed") -> str | None:
    """The final answer of a completion (whitespace stripped), or None when there is none or
    it is empty. See the module docstring for `source` and the reasoning rule."""
    if source not in SOURCES:
        raise ValueError(f"unknown answer source {source!r}; use one of {', '.join(SOURCES)}")
    text = _outside_reasoning(completion)
    found = None
    if source != "boxed":
        tags = _ANSWER_TAG.findall(text)
        found = tags[-1] if tags else None
    if found is None and source != "answer":
        found = last_boxed(text)
    if found is None and source == "final":
        found = _closing_answer(text)
    found = found.strip() if found is not None else None
    return found or None


def reference_answer(ref) -> str | None:
    """The final answer inside a reference: after `####` (GSM8K; thousands commas dropped),
    else the last \\boxed{…}, else a closing `The answer is: X`, else the reference itself.
    None for an empty reference."""
    if ref is None:
        return None
    ref = str(ref).strip()
    if "####" in ref:
        ans = ref.rsplit("####", 1)[1].strip()
        if _COMMA_NUMBER.fullmatch(ans):
            ans = ans.replace(",", "")
        return ans or None
    boxed = last_boxed(ref)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    return _closing_answer(ref) or ref or None


def _plain_number(s: str) -> tuple[Fraction, bool] | None:
    """(value, is_integer) when `s` is a plain integer or decimal (`72`, `-3`, `1,000`,
    `72.0`, `$18`, `.5`); None otherwise, and for decimals longer than math-verify's
    rounding, which are left to it."""
    s = s.strip()
    if s.startswith("\\$"):
        s = s[2:]
    s = s.strip("$ ").rstrip(".")
    m = _PLAIN_NUMBER.fullmatch(s)
    if not m:
        return None
    frac = m.group("frac") if m.group("frac") is not None else m.group("frac2")
    if frac is not None and len(frac.rstrip("0")) > _FLOAT_ROUNDING:
        return None
    return Fraction(s.replace(",", "")), not frac


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _timeout() -> int | None:
    # math-verify's time limits use SIGALRM, which works only on the main thread; elsewhere
    # they are turned off. A worker pool with hard per-item time limits is the robust answer
    # (a later issue).
    return _TIMEOUT_S if _on_main_thread() else None


def _wrap(expr: str) -> str:
    """As math-verify wants it: inside math delimiters, unless it already has its own."""
    unescaped = expr.replace("\\$", "")
    return expr if "$" in unescaped else f"${expr}$"


def _parse(expr: str) -> list:
    from math_verify import parse

    return parse(_wrap(expr), parsing_timeout=_timeout(), raise_on_error=True)


@lru_cache(maxsize=4096)
def _parsed_reference(gold: str) -> tuple | None:
    """math-verify's parse of a reference answer, or None when it gives no math (only the
    raw-string fallback). Cached: a group of G completions shares one reference."""
    try:
        parsed = _parse(gold)
    except BaseException as e:  # noqa: BLE001  (math-verify's TimeoutException is a BaseException)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        log.warning("cannot parse reference %r (%s: %s)", gold[:200], type(e).__name__, e)
        return None
    if not any(not isinstance(x, str) for x in parsed):
        return None
    return tuple(parsed)


def parses(ref) -> bool:
    """Whether the final answer of a reference parses as math (else rewards against it are
    None)."""
    gold = reference_answer(ref)
    if gold is None:
        return False
    return _plain_number(gold) is not None or _parsed_reference(gold) is not None


def is_equivalent(gold: str, pred: str) -> bool:
    """Whether `pred` equals the reference answer `gold` (both final answers, not whole
    texts). Plain numbers on both sides are compared exactly without math-verify (agreeing
    with it; tested); everything else goes to math-verify, gold first. May raise."""
    a, b = _plain_number(gold), _plain_number(pred)
    if a is not None and b is not None:
        return a[0] == b[0]
    from math_verify import verify

    g = _parsed_reference(gold)
    if g is None:
        return False
    p = _parse(pred)
    if not p:
        return False
    t = _timeout()
    try:
        return bool(verify(list(g), p, timeout_seconds=t, raise_on_error=True))
    except Exception as e:
        # one failing pair of candidate forms must not hide another that matches: log, and
        # let math-verify go on past the failure
        log.warning("verification raised %s: %s (gold %r, answer %r); retrying leniently",
                    type(e).__name__, e, gold[:100], pred[:100])
        return bool(verify(list(g), p, timeout_seconds=t, raise_on_error=False))


def accuracy_reward(completions: list[str], answer: list | None = None, source: str = "answer_or_boxed",
                    **kwargs) -> list[float | None]:
    """1.0 if a completion's final answer is equivalent to its reference (`answer` column),
    0.0 if not or if it gave no final answer, None when the reference cannot be parsed."""
    if answer is None:
        raise ValueError("accuracy_reward needs the reference answers as the `answer` column")
    if len(answer) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(answer)} reference answers")
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
        except BaseException as e:  # noqa: BLE001  (a timeout is a BaseException in math-verify)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            log.warning("verification failed (%s: %s) for answer %r against %r; scoring 0",
                        type(e).__name__, e, pred[:200], gold[:200])
            out.append(0.0)
    return out
