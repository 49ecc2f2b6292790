"""Math accuracy: the final answer of a completion checked against the reference answer,
equivalence decided by math-verify (numbers, fractions, LaTeX, sets, intervals, tuples, ...).

Where the final answer is looked for (`final_answer`, `extract_answer`):

- Reasoning does not count. Text inside <think>…</think> is skipped: only what follows the
  last </think> is searched (or the whole completion when it has no think tags; a <think>
  that is never closed means the completion is all reasoning and has no final answer). A
  value boxed or tagged while thinking is not a final answer.
- `source="answer"`: the content of the <answer>…</answer> block.
- `source="boxed"`: the content of the last \\boxed{…} / \\fbox{…} (braces balanced).
- `source="answer_or_boxed"` (the default, used in training): the answer block if there is
  one, else the last box.
- `source="final"`: as "answer_or_boxed", then falling back to a closing `The answer is: X`
  (the convention of MATH-style worked solutions and of models tuned on them).

A policy optimised against this reward looks for its holes, so there is no final answer
(score 0, with the reason) when the completion hedges or games the reader: more than one
answer block or nested answer tags, an answer block never closed, several *different* boxed
answers where the answer is read, an answer longer than `MAX_ANSWER_CHARS`, or a completion
longer than `max_chars`. A list of candidates (`3, 4, 5`, `3 or 4`) is a set to math-verify
and equals no single number; a claim of correctness is not math and equals nothing.

The reference (`reference_answer`) may be a bare answer, a GSM8K solution ending in
`#### 72`, or a worked solution with a \\boxed{…} or a closing `The answer is: …`.

Verification runs in worker processes with a hard time limit per item (`rewards.pool`):
math-verify's own limits use signals, which fail off the main thread, and some sympy work
ignores them. Plain numbers on both sides (the common case in GSM8K-style and the embedded
task) are compared exactly in-process, without math-verify.

Scores: 1.0 equivalent, 0.0 not equivalent / no final answer / verification failed or timed
out, None when the reference itself cannot be parsed (not applicable, never a reward; each
such reference is reported once).
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction
from functools import lru_cache

from .base import Scored, explained

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
_TIMEOUT_S = 5  # math-verify's own (signal) limits, where they work
MAX_ANSWER_CHARS = 1000  # a final answer longer than this is a ramble or a hack, not an answer
MAX_COMPLETION_CHARS = 200_000  # about 50k tokens; R1 sampled at most 32,768


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


def all_boxed(text: str) -> list[str]:
    """Contents of every \\boxed{…} / \\fbox{…} in `text`, in order (unclosed ones left out)."""
    out, end = [], len(text)
    while True:
        found = last_boxed(text[:end])
        start = max(text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end))
        if start < 0:
            return out[::-1]
        if found is not None:
            out.append(found)
        end = start


def _boxes(text: str) -> list[str]:
    """The distinct boxed answers of `text` (whitespace normalised), last one last."""
    out: list[str] = []
    for b in all_boxed(text):
        b = " ".join(b.split())
        if b in out:
            out.remove(b)
        out.append(b)
    return out


def final_answers(completion: str, source: str = "answer_or_boxed",
                  max_chars: int = MAX_COMPLETION_CHARS) -> tuple[list[str], str]:
    """(the final answers, "") or ([], why there is none). More than one answer only when the
    answer is read from boxes that say different things: a completion is then right only if
    all of them are (so hedging never pays, while `\\boxed{15\\frac{39}{40}}, or
    \\boxed{\\frac{639}{40}}` still counts). See the module docstring for `source`, the
    reasoning rule and the hedges that give no answer."""
    if source not in SOURCES:
        raise ValueError(f"unknown answer source {source!r}; use one of {', '.join(SOURCES)}")
    if len(completion) > max_chars:
        return [], f"completion longer than {max_chars} characters"
    text = _outside_reasoning(completion)
    if not text.strip():
        return [], ("reasoning never closed" if "<think>" in completion and "</think>" not in completion
                    else "nothing after the reasoning")
    found: list[str] = []
    if source != "boxed":
        opens, closes = text.count("<answer>"), text.count("</answer>")
        if opens > 1 or closes > 1:
            return [], "more than one answer tag"
        if opens or closes:
            m = _ANSWER_TAG.search(text)
            if m is None:
                return [], "unbalanced answer tags (a block never closed)"
            found = _boxes(m.group(1)) or [m.group(1)]
    if not found and source != "answer":
        found = _boxes(text)
    if not found and source == "final":
        closing = _closing_answer(text)
        found = [closing] if closing else []
    found = [f.strip() for f in found]
    if any(len(f) > MAX_ANSWER_CHARS for f in found):
        return [], f"answer longer than {MAX_ANSWER_CHARS} characters"
    if not found or not all(found):
        return [], "empty answer" if found else "no final answer"
    return found, ""


def extract_answer(completion: str, source: str = "answer_or_boxed") -> str | None:
    """The final answer of a completion (the last one where there are several), or None."""
    found = final_answers(completion, source)[0]
    return found[-1] if found else None


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
    if len(s) > 4000:  # Python's int() refuses over 4,300 digits; math-verify decides those
        return None
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
    # they are turned off (the worker pool's hard limits still hold).
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
        return None  # reported once by the caller (`_report_bad_reference`)
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


def _verify(gold: tuple, pred: list) -> bool:
    from math_verify import verify

    t = _timeout()
    try:
        return bool(verify(list(gold), pred, timeout_seconds=t, raise_on_error=True))
    except Exception as e:
        # one failing pair of candidate forms must not hide another that matches: log, and
        # let math-verify go on past the failure
        log.warning("verification raised %s: %s; retrying leniently", type(e).__name__, e)
        return bool(verify(list(gold), pred, timeout_seconds=t, raise_on_error=False))


def judge(gold: str, pred: str | None) -> str:
    """math-verify's verdict on one pair of final answers, as one word: "equal",
    "different", "unparsed" (the answer is not math), or "bad_reference" (the reference is
    not math). With `pred` None only the reference is checked ("ok" or "bad_reference"). Runs
    in a reward worker; may raise."""
    g = _parsed_reference(gold)
    if g is None:
        return "bad_reference"
    if pred is None:
        return "ok"
    p = _parse(pred)
    if not p:
        return "unparsed"
    return "equal" if _verify(g, p) else "different"


def is_equivalent(gold: str, pred: str) -> bool:
    """Whether `pred` equals the reference answer `gold` (both final answers, not whole
    texts), in this process. Plain numbers on both sides are compared exactly without
    math-verify (agreeing with it; tested); everything else goes to math-verify, gold first.
    May raise."""
    a, b = _plain_number(gold), _plain_number(pred)
    if a is not None and b is not None:
        return a[0] == b[0]
    return judge(gold, pred) == "equal"


_REPORTED: set[str] = set()  # references already reported as unparseable


def _report_bad_reference(gold: str) -> None:
    if gold not in _REPORTED:
        _REPORTED.add(gold)
        log.warning("reference answer %r cannot be parsed as math; its samples are skipped (reward None)",
                    gold[:200])


def _judge_all(pairs: list[tuple[str, str | None]], workers: int | None, timeout_s: float) -> list[tuple[str, str]]:
    """(verdict, detail) for each pair: in the shared worker pool, or in this process when
    `workers` is 0 (math-verify's own signal limits only; for debugging)."""
    if workers == 0:
        out = []
        for gold, pred in pairs:
            try:
                out.append((judge(gold, pred), ""))
            except BaseException as e:  # noqa: BLE001  (math-verify's timeout is a BaseException)
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                out.append(("failed", f"verification failed: {type(e).__name__}: {e}"))
        return out
    from .pool import shared_pool

    outcomes = shared_pool("math_verify", workers).map(judge, pairs, timeout_s)
    return [(o.value, "") if o.status == "ok" else ("failed", f"verification {o.status}: {o.value}")
            for o in outcomes]


@explained
def accuracy_reward(completions: list[str], answer: list | None = None, source: str = "answer_or_boxed",
                    timeout_s: float = 10.0, workers: int | None = None, max_chars: int = MAX_COMPLETION_CHARS,
                    **kwargs) -> list[Scored]:
    """1.0 if a completion's final answer is equivalent to its reference (`answer` column),
    0.0 if not or if it gave no final answer (or verification failed or ran past `timeout_s`
    seconds), None when the reference cannot be parsed. `workers`: verification processes
    (None: min(4, cores); 0: verify in this process)."""
    if answer is None:
        raise ValueError("accuracy_reward needs the reference answers as the `answer` column")
    if len(answer) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(answer)} reference answers")
    out: list[Scored | None] = [None] * len(completions)
    todo: list[tuple[int, str, str | None]] = []  # (row, gold, one prediction or None)
    for i, (completion, ref) in enumerate(zip(completions, answer)):
        gold = reference_answer(ref)
        if gold is None:
            out[i] = Scored(None, "no reference answer")
            continue
        preds, why = final_answers(completion, source, max_chars)
        if not preds:
            out[i] = Scored(0.0, why)  # unless the reference is bad: checked below
        gold_number = _plain_number(gold)
        if gold_number is not None and not preds:
            continue
        for pred in preds or [None]:
            number = _plain_number(pred) if pred is not None else None
            if gold_number is not None and number is not None:  # the fast path: exact, no math-verify
                if gold_number[0] != number[0] and out[i] is None:
                    out[i] = Scored(0.0, f"{pred} is not {gold}")
            else:
                todo.append((i, gold, pred))
    verdicts = _judge_all([(gold, pred) for _, gold, pred in todo], workers, timeout_s)
    for (i, gold, pred), (verdict, detail) in zip(todo, verdicts):
        if verdict == "bad_reference":
            _report_bad_reference(gold)
            out[i] = Scored(None, "reference cannot be parsed")
        elif out[i] is not None:
            continue  # already decided (no answer, or another of its answers is wrong)
        elif verdict == "failed":
            log.warning("%s for answer %r against %r; scoring 0", detail, (pred or "")[:200], gold[:200])
            out[i] = Scored(0.0, detail)
        elif verdict == "unparsed":
            out[i] = Scored(0.0, f"answer {pred!r} is not math")
        elif verdict == "different":
            out[i] = Scored(0.0, f"{pred} is not {gold}")
    return [Scored(1.0) if s is None else s for s in out]


def _warm_up(workers: int | None = None, **_settings) -> None:
    """Launch one verification worker now (`WorkerPool.prestart`), so that its start-up overlaps
    the trainer's instead of stalling the first batch with an answer that is not a plain number."""
    if workers != 0:
        from .pool import shared_pool

        shared_pool("math_verify", workers).prestart(1)


accuracy_reward.warm_up = _warm_up  # called by WeightedRewards.warm_up with the reward's settings
