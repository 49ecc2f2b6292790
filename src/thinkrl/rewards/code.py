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
  `check(<entry_point>)` is called after each test that defines `check`. A test passes when it
  runs to the end without an exception. The program and the tests never share an interpreter
  (`rewards.code_harness`, `sandbox.run_pair`): the *program* process loads the solution as
  module `solution` (its `if __name__ == "__main__":` block does not run) and answers calls; the
  *judge* process runs the tests, in which each of the solution's functions is a proxy that
  sends the arguments across and gets back a value. Only plain values cross (None, bool, int,
  float, complex, str, bytes, and lists, tuples, dicts, sets, frozensets of them), rebuilt in
  the judge as genuine builtin values, so `==` is Python's own; the state of list, dict and
  set arguments after the call comes back too (in-place changes are seen). Exceptions cross as
  the nearest builtin class with the message. The solution's plain top-level constants are
  copied as values when it has loaded, and its `import x`, where the tests use `x`, as the
  judge's own module `x`; its names never shadow the builtins the tests use. Only the judge's output carries verdicts:
  nothing the program does (walking frames, printing, exiting, patching builtins or the
  harness) can pass a test it did not answer, and the tests are never in the program's reach.
  Refused, with the reason as the failure: a function that returns anything else (a class
  instance, a generator, an object claiming to equal anything, a subclass of a plain type:
  "returned a Foo, which is not a plain value"), an argument that cannot cross (a lambda of
  the test's: "cannot be passed to the solution"; the solution's own functions can), and any
  use of a top-level name bound to such an object. Not supported: identity (`is`) between an
  argument and a result, and globals the solution changes after loading.
  `prompt` (a column, e.g. HumanEval's): the code the completion continues. Where it is Python
  defining something the tests use (HumanEval/38's `encode_cyclic`, /32's `poly`), the judge
  runs it itself and the tests use its definitions, never the program's; only its functions
  left as stubs (a docstring, `pass` or `...` for a body) and the entry point are the program's.
  Without it, such helpers come from the program, which could redefine them.
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

import ast
import functools
import json
import marshal
import math
import re
from pathlib import Path

from ..sandbox import SANDBOX_ERROR, Execution, Job, Limits, PairJob, default_pool
from . import code_harness, code_wire
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


# ---------------------------------------------------------------- assert-style: judge and program

# what both processes of a pair run, before a call of judge_main() or program_main(solution)
SOURCE = "\n".join(Path(m.__file__).read_text(encoding="utf-8") for m in (code_wire, code_harness))


@functools.cache
def _harness() -> str:
    """`SOURCE` as a program that defines its functions from bytecode compiled here once (the
    sandbox runs this same interpreter): compiling it in every run would cost more than the rest."""
    code = marshal.dumps(compile(SOURCE, "code_harness.py", "exec", optimize=2))
    return f"import marshal\nexec(marshal.loads({code!r}))\ndel marshal\n"


def _names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


@functools.lru_cache(maxsize=512)
def _judge_input(tests: tuple[str, ...], entry: str | None, prompt: str | None) -> str:
    """The judge's configuration line: the tests, the entry point, the names the tests use (the
    only ones for which the program's `import x` becomes the judge's module x; None: unknown),
    and the trusted context: the row's prompt, when it is Python that defines something the
    tests use (else the judge need not run it), with its top-level defs whose body is only a
    docstring, `pass` or `...` (stubs: the program's to write)."""
    try:
        used = set().union(*(_names(ast.parse(t)) for t in tests))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        used = None
    context, stubs = prompt, []
    try:
        tree = ast.parse(prompt) if isinstance(prompt, str) else None
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        tree = None
    if tree is not None:
        stubs = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
                         for s in node.body)]
        defined = set()  # anywhere in it, over-counted: at worst the judge runs it needlessly
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                defined.update((a.asname or a.name).split(".")[0] for a in node.names)
        if used is not None and not (defined - set(stubs) - {entry}) & used:
            tree = None
    if tree is None:
        context, stubs = None, []
    return json.dumps({"tests": list(tests), "entry": entry, "used": None if used is None else sorted(used),
                       "context": context, "stubs": stubs}) + "\n"


def _pair_job(solution: str, tests: list[str], entry: str | None, prompt, limits: Limits) -> PairJob:
    return PairJob(judge=_harness() + "judge_main()\n",
                   judge_input=_judge_input(tuple(tests), entry, prompt if isinstance(prompt, str) else None),
                   program=f"{_harness()}program_main({solution!r})\n", limits=limits)


def _why(ex: Execution, timeout_s: float) -> str:
    if ex.status == "timeout":
        return f"timeout after {timeout_s:g} s"
    if ex.status == "memory":
        return "memory limit"
    if ex.status == "output_limit":
        return "output limit"
    return ex.reason


def _score_asserts(judge: Execution, program: Execution, n: int, timeout_s: float) -> tuple[int, str]:
    """(tests passed, first failure) from the judge's verdict lines; where the program ended
    early, why it did."""
    gone = (f"{_why(program, timeout_s)}" if program.status != "ok"
            else "the program exited before the tests finished")
    results: dict[int, str | None] = {}
    load_fail = done = None
    for line in judge.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "LOADFAIL":
            load_fail = f"the solution raised {rest or 'an error'}"
        elif kind == "GONE":
            load_fail = gone
        elif kind == "DONE":
            done = True
        elif kind in ("PASS", "FAIL"):
            idx, _, text = rest.partition(" ")
            if idx.isdigit() and int(idx) < n and int(idx) not in results:
                results[int(idx)] = None if kind == "PASS" else (gone if text == "GONE" else text or "failed")
    if load_fail is not None:
        return 0, load_fail
    passed = sum(1 for i in range(n) if i in results and results[i] is None)
    for i in range(n):
        if results.get(i, "") is not None:
            if i in results:
                why = results[i]
            elif program.status != "ok":
                why = gone
            elif judge.status != "ok":
                why = f"the tests' process: {_why(judge, timeout_s)}"
            else:
                why = "no result" if done else "the tests ended early"
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
                timeout_s: float = 5.0, memory_mb: int = 512, float_tol: float | None = None, prompt=None,
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
    if prompt is None:  # in training the row's question arrives as `prompts`: its helpers are trusted too
        prompt = kwargs.get("prompts")
    contexts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt] * n
    if len(entries) != n or len(tols) != n or len(contexts) != n:
        raise ValueError(f"{n} completions but {len(entries)} entry points, {len(tols)} float_tol values and "
                         f"{len(contexts)} prompts")
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
            plans.append((row, kind, cases, len(jobs)))
            jobs.append(_pair_job(code, cases, entry or None, contexts[row], limits))
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
            judge, program = results[first]
            if SANDBOX_ERROR in (judge.status, program.status):
                out[row] = Scored(None, judge.reason if judge.status == SANDBOX_ERROR else program.reason)
                continue
            total = len(payload)
            passed, why = _score_asserts(judge, program, total, timeout_s)
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
