"""Hostile solutions against the assert-style code reward: every way a wrong program has found
to be scored as right. Each test is named after the guarantee it checks; every attempt must
score 0, and an honest solution of the same tests scores 1 (so the zeros are not failures of
the harness). The escapes from the sandbox itself are in test_sandbox.py."""

from __future__ import annotations

import gzip
import json

from thinkrl.rewards.code import code_reward

from .shared_data import DATA, needs_data


def block(code: str) -> str:
    return f"```python\n{code}\n```"


def scores(programs: list[str], tests, **kw):
    return code_reward.scores([block(p) for p in programs], tests=[tests] * len(programs), **kw)


def assert_all_zero(results, what):
    bad = [(i, s) for i, s in enumerate(results) if s.value != 0.0]
    assert not bad, f"{what}: forged {bad}"


# ---------------------------------------------------------------- the verdicts

# find the harness's per-run token (a frame's local) and write its "passed" lines; where there
# is none, write verdict-looking lines on every descriptor there is, then leave
STACK_AT_LOAD = r'''
import os, sys
frame, token = sys._getframe(), None
while frame is not None:
    if isinstance(frame.f_locals.get("token"), str):
        token, tests = frame.f_locals["token"], frame.f_locals.get("tests") or [0]
        break
    frame = frame.f_back
if token is not None:
    os.write(1, "".join("\n%s PASS %d\n" % (token, i) for i in range(len(tests))).encode())
    os.write(1, ("\n%s DONE\n" % token).encode())
else:
    for fd in range(64):
        for line in (b"PASS 0\nPASS 1\nDONE\n", b'{"id": 1, "ok": 42, "after": []}\n'):
            try:
                os.write(fd, line)
            except OSError:
                pass
os._exit(0)
'''

# at call time, from the frames of a traceback: call the harness's own reporting function
TRACEBACK_AT_CALL = r'''
import os
def solve(*args):
    try:
        raise RuntimeError
    except RuntimeError as e:
        frame = e.__traceback__.tb_frame
    while frame is not None:
        for name in ("report", "send", "_send"):
            fn = frame.f_locals.get(name) or frame.f_globals.get(name)
            if callable(fn):
                try:
                    fn("PASS 0")
                    fn("PASS 1")
                    fn("DONE")
                except Exception:
                    continue
                os._exit(0)
        frame = frame.f_back
    return 0
'''


def test_verdicts_are_beyond_the_programs_reach():
    """Walking the stack (sys._getframe, a traceback's frames) to the harness and writing its
    verdicts, or writing verdict-like lines anywhere, passes nothing: the verdicts come from a
    process that never runs the program."""
    tests = ["assert solve(3) == 42", "assert solve(4) == 43"]
    assert_all_zero(scores([STACK_AT_LOAD, TRACEBACK_AT_CALL], tests), "stack walking")
    assert scores(["def solve(x):\n    return x + 39"], tests)[0].value == 1.0


# ---------------------------------------------------------------- values

ALWAYS_EQUAL = [
    # an object that equals anything, either way round
    "class Any:\n    def __eq__(self, other):\n        return True\n"
    "    def __ne__(self, other):\n        return False\n    __hash__ = object.__hash__\n"
    "def solve(*args):\n    return Any()",
    # subclasses of plain types that lie
    "class Int(int):\n    __eq__ = lambda self, other: True\n    __ne__ = lambda self, other: False\n"
    "    __hash__ = int.__hash__\ndef solve(*args):\n    return Int(0)",
    "class Str(str):\n    __eq__ = lambda self, other: True\n    __hash__ = str.__hash__\ndef solve(*args):\n"
    "    return Str('')",
    "class List(list):\n    __eq__ = lambda self, other: True\ndef solve(*args):\n    return List()",
    # arithmetic that lands inside any tolerance
    "class Near(float):\n    __sub__ = __rsub__ = lambda self, other: 0.0\ndef solve(*args):\n    return Near(0)",
]


def test_an_object_that_claims_equality_is_not_a_value():
    """Comparisons are Python's own, on genuine builtin values: a return value that is not made
    of exactly the plain types is refused ("not a plain value"), never compared."""
    tests = ["assert solve(3) == 42", "assert 42 == solve(3)", "assert not (solve(3) != 42)",
             "assert abs(solve(3) - 42.0) < 1e-9", "def check(candidate):\n    assert candidate(3) == 42\n"]
    results = scores(ALWAYS_EQUAL, tests, entry_point="solve")
    assert_all_zero(results, "always-equal objects")
    assert all("which is not a plain value" in s.reason for s in results), results
    assert scores(["def solve(x):\n    return 42"], tests, entry_point="solve")[0].value == 1.0


# ---------------------------------------------------------------- the tests themselves

# the expected value from the test's code: a caller's locals, a caller's constants, the
# program's own files, other runs' directories and processes
READ_FROM_FRAMES = r'''
import re, sys
def solve(*args):
    frame = sys._getframe(1)
    while frame is not None:
        for v in list(frame.f_locals.values()) + [frame.f_locals.get("test")]:
            for text in (v if isinstance(v, list) else [v]):
                if isinstance(text, str) and "solve(%r)" % args[0] in text:
                    m = re.search(r"solve\(%r\) == (\d+)" % args[0], text)
                    if m:
                        return int(m.group(1))
        frame = frame.f_back
    return None
'''

READ_FROM_CONSTANTS = r'''
import sys
def solve(*args):
    frame = sys._getframe(1)
    while frame is not None:
        consts = [c for c in frame.f_code.co_consts if type(c) is int and c not in args and c > 100]
        if consts:
            return consts[0]
        frame = frame.f_back
    return None
'''

READ_FROM_FILES = r'''
import glob, os, re, sys
def solve(*args):
    places = [getattr(sys.modules.get("__main__"), "__file__", None), "/proc/self/cmdline", "/proc/self/fd/0"]
    places += glob.glob("/tmp/thinkrl-sandbox-*/main.py") + glob.glob("/proc/*/cmdline") + glob.glob("/proc/*/environ")
    for path in places:
        try:
            with open(path, "rb") as f:
                text = f.read(10 ** 7).decode("utf-8", "replace")
        except Exception:
            continue
        m = re.search(r"solve\(%r\) == (\d+)" % args[0], text.replace("\\n", "\n"))
        if m:
            return int(m.group(1))
    return None
'''


def test_the_tests_are_beyond_the_programs_reach():
    """The test code (and so its expected values) is never in the program's process or files:
    not in a caller's frame or constants, not in the program's own main.py; other runs'
    directories and processes are closed to it."""
    tests = ["assert solve(3) == 123456789", "assert solve(5) == 987654321"]
    assert_all_zero(scores([READ_FROM_FRAMES, READ_FROM_CONSTANTS, READ_FROM_FILES], tests), "reading the tests")
    honest = "def solve(x):\n    return {3: 123456789, 5: 987654321}[x]"
    assert scores([honest], tests)[0].value == 1.0


SHADOWS = [
    "def abs(x):\n    return 0\ndef solve(x):\n    return -1.0",
    "def all(xs):\n    return True\ndef solve(x):\n    return -1",
    "def sorted(xs, **kw):\n    return [1, 2, 3]\ndef solve(x):\n    return [0]",
    "def isinstance(*a):\n    return True\ndef len(x):\n    return 3\ndef solve(x):\n    return None",
    "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.all = lambda xs: True\ndef solve(x):\n    return -1",
]


def test_the_builtins_the_tests_use_are_not_the_programs():
    """A solution's top-level `abs`, `all`, `sorted`, ... do not replace the builtins the
    tests call, and patching `builtins` changes only the program's own interpreter."""
    tests = ["assert abs(solve(1.0) - 2.5) < 1e-6", "assert all(solve(i) == i * i for i in range(3))",
             "assert sorted(solve([3, 2, 1])) == [1, 2, 3]",
             "assert isinstance(solve([1, 2, 3]), list) and len(solve([1, 2, 3])) == 3"]
    results = [s for t in tests for s in scores(SHADOWS, [t])]
    assert_all_zero(results, "shadowed builtins")


FAKE_MODULES = [
    "import types\nmath = types.ModuleType('math')\nmath.isclose = lambda *a, **k: True\ndef solve(x):\n    return 0.0",
    "class Anything:\n    def __call__(self, *a, **k):\n        return True\n    def __getattr__(self, name):\n"
    "        return self\nmath = Anything()\ndef solve(x):\n    return 0.0",
]


def test_modules_the_tests_use_are_the_judges_own():
    """A test may use a module the solution imported without importing it itself; that name is
    then the judge's own import of the module, whatever the program bound to it."""
    tests = ["assert math.isclose(solve(2.0), 1.41421356, rel_tol=1e-6)"]
    assert_all_zero(scores(FAKE_MODULES, tests), "fake modules")
    assert scores(["import math\ndef solve(x):\n    return math.sqrt(x)"], tests)[0].value == 1.0


# ---------------------------------------------------------------- trusted helpers

PROMPT = 'def helper(s: str) -> str:\n    return s[::-1] + "!"\n\n\ndef undo(s: str) -> str:\n    """Undo helper."""\n'
CHECK = "def check(candidate):\n    for s in ['abc', 'xy', '']:\n        assert candidate(helper(s)) == s\n"
IDENTITY_HELPER = "def helper(s):\n    return s\n\ndef undo(s):\n    return s"


def test_helpers_the_prompt_defines_are_the_judges_own():
    """Where the row's prompt defines the helpers its tests use, the judge runs the prompt
    itself: a program that redefines a helper (here as the identity, which makes the identity
    a "solution") changes nothing for the tests."""
    (s,) = code_reward.scores([block(IDENTITY_HELPER)], tests=[CHECK], entry_point="undo", prompt=[PROMPT])
    assert s.value == 0.0, s
    honest = PROMPT + "    return s[:-1][::-1]"
    assert code_reward([block(honest)], tests=[CHECK], entry_point="undo", prompt=[PROMPT]) == [1.0]
    assert code_reward([block("def undo(s):\n    return s[:-1][::-1]")], tests=[CHECK], entry_point="undo",
                       prompt=[PROMPT]) == [1.0]  # the helper need not be repeated


@needs_data
def test_humaneval_helpers_are_the_judges_own():
    """HumanEval/32 (`poly`), /38 (`encode_cyclic`) and /50 (`encode_shift`): redefining the
    helper the test relies on forges nothing when the row's prompt comes with it (as the
    evaluator passes it)."""
    with gzip.open(DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        rows = {r["task_id"]: r for r in map(json.loads, f)}
    forged = {"HumanEval/32": "def poly(xs, x):\n    return 0.0\n\ndef find_zero(xs):\n    return 0.0",
              "HumanEval/38": "def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s",
              "HumanEval/50": "def encode_shift(s):\n    return s\n\ndef decode_shift(s):\n    return s"}
    picked = [rows[k] for k in forged]
    results = code_reward.scores([block(p) for p in forged.values()], tests=[r["test"] for r in picked],
                                 entry_point=[r["entry_point"] for r in picked], prompt=[r["prompt"] for r in picked])
    assert_all_zero(results, "redefined HumanEval helpers")


@needs_data
def test_helpers_are_the_judges_own_in_training_too():
    """In GRPO the row's question (HumanEval's prompt, mapped by data.question_field) reaches the
    rewards as `prompts`, not as a `prompt` column: its helpers are trusted all the same."""
    from thinkrl.rewards.combine import WeightedRewards

    with gzip.open(DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        row = next(r for r in map(json.loads, f) if r["task_id"] == "HumanEval/38")
    forged = block("def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s")
    honest = block(row["prompt"] + row["canonical_solution"])
    rows = [{"question": row["prompt"], "answer": "", "tests": row["test"], "entry_point": row["entry_point"]}] * 2
    total, _ = WeightedRewards({"code": 1.0})([forged, honest], rows, prompts=[row["prompt"]] * 2)
    assert total == [0.0, 1.0]


# ---------------------------------------------------------------- refusals


def test_what_cannot_cross_is_refused_with_a_reason():
    """Tests that need more than plain values between the program and the tests (an instance
    of the program's class, a generator, a lambda of the test's, a top-level object) cannot be
    judged without running the program's code beside the tests: they fail, saying why."""
    point = ("class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n"
             "    def __eq__(self, o):\n        return (self.x, self.y) == (o.x, o.y)\n")
    cases = [
        (point + "def make(x, y):\n    return Point(x, y)", "assert make(1, 2) == make(1, 2)",
         "make() returned a Point, which is not a plain value"),
        ("def gen(n):\n    return (i for i in range(n))", "assert list(gen(3)) == [0, 1, 2]",
         "gen() returned a generator, which is not a plain value"),
        ("def apply(f, x):\n    return f(x)", "assert apply(lambda v: v + 1, 2) == 3",
         "apply() was given a function, which cannot be passed to the solution"),
        (point + "ORIGIN = Point(0, 0)", "assert ORIGIN.x == 0",
         "solution.ORIGIN is a Point, which is not a plain value"),
    ]
    for program, test, why in cases:
        (s,) = scores([program], [test])
        assert s.value == 0.0 and why in s.reason, (program, s)
