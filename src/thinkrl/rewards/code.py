"""Code correctness: the program in a completion, run against the row's tests in the sandbox
(`thinkrl.sandbox`: one fresh, isolated interpreter per run, all runs of a batch in parallel).

Where the program is looked for (`extract_code`):

- Reasoning does not count (the rule of `rewards.math`): only what follows the last </think>
  is searched, or the whole completion when it has no think tags; a <think> that is never
  closed means there is no answer at all.
- The last fenced block tagged ```python (or py / python3) or untagged; blocks in another
  language are skipped.
- Else the content of the last <answer>…</answer> block, if it looks like code (it compiles
  and defines, imports, prints or reads something).

The tests of a row (`tests` column), in either of two formats:

- **Assert-style** (HumanEval, MBPP): a string of test code, or a list of them, each counted
  as one test. HumanEval's test code defines `check(candidate)`; with `entry_point` given,
  `check(<entry_point>)` is called after each test that defines `check`. The solution runs as
  module `solution` (its `if __name__ == "__main__":` block does not run), then each test in
  its namespace; a test passes when it runs to the end without an exception. A harness line
  carrying a random per-run token reports each result, so a program that exits early
  (`sys.exit(0)`, `os._exit(0)`) or prints fake results passes nothing, and the tests run
  with the builtins as they were before the solution ran. (This stops the easy hacks, not a
  determined adversary: frame introspection could find the token, and a function may return
  an object that compares equal to anything.)
- **stdin/stdout cases** (competitive programming): a list of `{"input": ..., "output": ...}`
  (or `{"inputs": [...], "outputs": [...]}`); each case is its own run with the input on
  stdin. It passes when the program exits normally and its output matches token by token
  (whitespace-tolerant); with `float_tol` (a keyword, or a case's own `"float_tol"`) two
  tokens that both parse as numbers also match within that absolute or relative tolerance
  (`float_tol` may be one value or one per row).

A row's tests may also arrive as a JSON string of either (from JSONL files). No tests (None,
empty) is "not applicable": Scored(None, "no tests").

Score: the fraction of tests passed (`mode="fraction"`) or 1/0 all-or-nothing (`mode="all"`);
anything short of full marks says why ("2/5 tests passed; first failure: ..."). Each run gets
`timeout_s` of CPU time (and 1.5 × that + 1 s of wall clock) and `memory_mb` of address space;
programs have the standard library only. A failure of the sandbox itself (never caused by the
program) scores None with its reason rather than a zero the policy did not earn.
"""

from __future__ import annotations

import json
import math
import re
import secrets

from ..sandbox import SANDBOX_ERROR, Execution, Job, Limits, default_pool
from .base import Scored, explained
from .math import _outside_reasoning

MODES = ("fraction", "all")

_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_CODE_HINT = re.compile(r"^\s*(def|class|import|from|for|while|if)\b|print\(|input\(|sys\.stdin", re.MULTILINE)


def _looks_like_code(text: str) -> bool:
    if not _CODE_HINT.search(text):
        return False
    try:
        compile(text, "<answer>", "exec")
    except Exception:  # SyntaxError, ValueError (null bytes), RecursionError, MemoryError
        return False
    return True


def extract_code(completion: str) -> str | None:
    """The program in a completion, or None (see the module docstring)."""
    text = _outside_reasoning(completion)
    blocks = [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() in _PYTHON_TAGS]
    blocks = [b for b in blocks if b.strip()]
    if blocks:
        return blocks[-1].strip("\n")
    answers = _ANSWER_TAG.findall(text)
    if answers and _looks_like_code(answers[-1].strip()):
        return answers[-1].strip("\n")
    return None


# ---------------------------------------------------------------- tests


def _text(x) -> str:
    if isinstance(x, (list, tuple)):
        return "\n".join(str(v) for v in x)
    return "" if x is None else str(x)


def parse_tests(row):
    """("asserts", [code, ...]) or ("io", [{"input", "output", "float_tol"?}, ...]) or None for
    no tests. ValueError when the row is of no known shape."""
    if row is None:
        return None
    if isinstance(row, str):
        s = row.strip()
        if not s:
            return None
        if s[0] in "[{":
            try:
                row = json.loads(s)
            except ValueError:
                return "asserts", [row]
        else:
            return "asserts", [row]
    if isinstance(row, dict):
        if "inputs" in row and "outputs" in row:
            if len(row["inputs"]) != len(row["outputs"]):
                raise ValueError(f"{len(row['inputs'])} inputs but {len(row['outputs'])} outputs")
            row = [{"input": i, "output": o} for i, o in zip(row["inputs"], row["outputs"])]
        elif "input" in row and "output" in row:
            row = [row]
        else:
            raise ValueError(f"a test dict needs input/output or inputs/outputs, got keys {sorted(row)}")
    if isinstance(row, (list, tuple)):
        if not row:
            return None
        if all(isinstance(t, str) for t in row):
            return "asserts", list(row)
        if all(isinstance(t, dict) and "input" in t and "output" in t for t in row):
            return "io", [{"input": _text(t["input"]), "output": _text(t["output"]),
                           **({"float_tol": float(t["float_tol"])} if t.get("float_tol") is not None else {})}
                          for t in row]
    raise ValueError(f"unrecognised tests: {str(row)[:200]}")


def _number(tok: str) -> float | None:
    try:
        v = float(tok)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def outputs_match(got: str, expected: str, float_tol: float | None = None) -> bool:
    """Token-by-token equality after splitting on whitespace; with `float_tol`, tokens that
    both parse as finite numbers match within that absolute or relative tolerance."""
    a, b = got.split(), expected.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        if float_tol is None:
            return False
        fx, fy = _number(x), _number(y)
        if fx is None or fy is None or abs(fx - fy) > float_tol * max(1.0, abs(fy)):
            return False
    return True


def _short(s: str, n: int = 60) -> str:
    s = " ".join(s.split())
    return repr(s if len(s) <= n else s[: n - 3] + "...")


# ---------------------------------------------------------------- the harness (assert-style)

_HARNESS = r'''
def __thinkrl_harness(solution, tests, entry):
    import builtins, os, sys
    # bound now: the solution may patch builtins, but not what the harness and the tests use
    write, exec_, compile_, str_, type_, len_, enum_, dict_, BaseException_ = (
        os.write, exec, compile, str, type, len, enumerate, dict, BaseException)
    clean_builtins = dict_(builtins.__dict__)
    token = sys.stdin.readline().strip()

    def report(line):
        try:
            write(1, ("\n%s %s\n" % (token, line)).encode("utf-8", "replace"))
        except OSError:
            pass

    def describe(e, source):
        try:
            text = "%s: %s" % (type_(e).__name__, e) if str_(e) else type_(e).__name__
        except BaseException_:
            text = type_(e).__name__
        line, tb = None, e.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<test>":
                line = tb.tb_lineno
            tb = tb.tb_next
        if line is not None and source is not None:
            lines = source.splitlines()
            if 0 < line <= len_(lines):
                text += " at: " + lines[line - 1].strip()
        return " ".join(text.split())[:300]

    ns = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec_(compile_(solution, "solution.py", "exec"), ns)
    except BaseException_ as e:
        report("LOADFAIL " + describe(e, None))
        return
    for i, test in enum_(tests):
        scope = dict_(ns)  # each test sees the solution's names, and the real builtins
        scope["__builtins__"] = clean_builtins
        try:
            exec_(compile_(test, "<test>", "exec"), scope)
            if entry is not None and "def check(" in test:
                if entry not in scope:
                    raise NameError("entry point %r is not defined" % entry)
                scope["check"](scope[entry])
        except BaseException_ as e:
            report("FAIL %d %s" % (i, describe(e, test)))
        else:
            report("PASS %d" % i)
    report("DONE")
'''


def _assert_program(solution: str, tests: list[str], entry: str | None) -> str:
    return f"{_HARNESS}\n__thinkrl_harness({solution!r}, {tests!r}, {entry!r})\n"


def _why(ex: Execution, timeout_s: float) -> str:
    if ex.status == "timeout":
        return f"timeout after {timeout_s:g} s"
    if ex.status == "memory":
        return "memory limit"
    if ex.status == "output_limit":
        return "output limit"
    return ex.reason


def _score_asserts(ex: Execution, token: str, n: int, timeout_s: float) -> tuple[int, str]:
    """(tests passed, first failure) from a harness run."""
    results: dict[int, str | None] = {}
    load_fail = done = None
    for m in re.finditer(re.escape(token) + r" (PASS|FAIL|LOADFAIL|DONE)(?: (\d+))?(?: ([^\n]*))?", ex.stdout):
        kind, idx, text = m.group(1), m.group(2), m.group(3)
        if kind == "LOADFAIL":
            load_fail = text or "error"
        elif kind == "DONE":
            done = True
        elif idx is not None and int(idx) < n and int(idx) not in results:
            results[int(idx)] = None if kind == "PASS" else (text or "failed")
    passed = sum(1 for i in range(n) if i in results and results[i] is None)
    if load_fail is not None:
        return 0, f"the solution raised {load_fail}"
    for i in range(n):
        if results.get(i, "") is not None:
            if i in results:
                return passed, f"test {i + 1}: {results[i]}" if n > 1 else results[i]
            if ex.status != "ok":
                why = _why(ex, timeout_s)
            elif done:
                why = "no result"
            else:
                why = "the program exited before the tests finished"
            return passed, f"test {i + 1}: {why}" if n > 1 else why
    return passed, ""


def _score_io(ex: Execution, case: dict, index: int, n: int, float_tol: float | None, timeout_s: float):
    """(passed, why not)"""
    where = f" on test {index + 1}" if n > 1 else ""
    if not ex.ok:
        if ex.status in ("error", "refused"):
            return False, f"runtime error{where}: {ex.reason}"
        return False, f"{_why(ex, timeout_s)}{where}"
    tol = case.get("float_tol", float_tol)
    if outputs_match(ex.stdout, case["output"], tol):
        return True, ""
    return False, f"wrong answer{where}: expected {_short(case['output'])}, got {_short(ex.stdout)}"


# ---------------------------------------------------------------- the reward


@explained
def code_reward(completions: list[str], tests: list | None = None, entry_point=None, mode: str = "fraction",
                timeout_s: float = 5.0, memory_mb: int = 512, float_tol: float | None = None,
                **kwargs) -> list[Scored]:
    """Fraction of the row's tests the completion's program passes (`mode="fraction"`), or 1/0
    when all pass (`mode="all"`); 0.0 with a reason when it has no code block; None when the
    row has no tests (or the sandbox itself failed). See the module docstring."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number, got {timeout_s!r}")
    n = len(completions)
    if tests is None:
        return [Scored(None, "no tests")] * n
    if len(tests) != n:
        raise ValueError(f"{n} completions but {len(tests)} test rows")
    entries = list(entry_point) if isinstance(entry_point, (list, tuple)) else [entry_point] * n
    tols = list(float_tol) if isinstance(float_tol, (list, tuple)) else [float_tol] * n
    if len(entries) != n or len(tols) != n:
        raise ValueError(f"{n} completions but {len(entries)} entry points and {len(tols)} float_tol values")
    limits = Limits(cpu_s=float(timeout_s), wall_s=float(timeout_s) * 1.5 + 1, memory_mb=int(memory_mb))

    out: list[Scored | None] = [None] * n
    jobs: list[Job] = []
    plans = []  # (row, kind, payload, first job index)
    for row, (completion, row_tests, entry) in enumerate(zip(completions, tests, entries)):
        try:
            parsed = parse_tests(row_tests)
        except (ValueError, TypeError) as e:
            out[row] = Scored(None, f"unreadable tests: {e}")
            continue
        if parsed is None:
            out[row] = Scored(None, "no tests")
            continue
        code = extract_code(completion) if isinstance(completion, str) else None
        if code is None:
            out[row] = Scored(0.0, "no code block")
            continue
        kind, cases = parsed
        if kind == "asserts":
            token = secrets.token_hex(16)
            plans.append((row, kind, (cases, token), len(jobs)))
            jobs.append(Job(_assert_program(code, cases, entry or None), token + "\n", limits))
        else:
            big = max(len(c["output"]) for c in cases)
            io_limits = limits if big * 2 + 65536 <= limits.max_output_bytes else Limits(
                cpu_s=limits.cpu_s, wall_s=limits.wall_s, memory_mb=limits.memory_mb,
                max_output_bytes=big * 2 + 65536)
            plans.append((row, kind, (cases, None if tols[row] is None else float(tols[row])), len(jobs)))
            jobs.extend(Job(code, c["input"], io_limits) for c in cases)

    results = default_pool().map(jobs) if jobs else []

    for row, kind, payload, first in plans:
        if kind == "asserts":
            cases, token = payload
            ex = results[first]
            if ex.status == SANDBOX_ERROR:
                out[row] = Scored(None, ex.reason)
                continue
            total = len(cases)
            passed, why = _score_asserts(ex, token, total, timeout_s)
        else:
            cases, tol = payload
            total, passed, why = len(cases), 0, ""
            runs = results[first:first + total]
            if any(ex.status == SANDBOX_ERROR for ex in runs):
                out[row] = Scored(None, next(ex.reason for ex in runs if ex.status == SANDBOX_ERROR))
                continue
            for i, (case, ex) in enumerate(zip(cases, runs)):
                ok, reason = _score_io(ex, case, i, total, tol, timeout_s)
                passed += ok
                if not ok and not why:
                    why = reason
        if passed == total:
            out[row] = Scored(1.0, "")
        else:
            value = passed / total if mode == "fraction" else 0.0
            out[row] = Scored(value, f"{passed}/{total} tests passed; first failure: {why}")
    return out
