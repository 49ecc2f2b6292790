"""The code reward: real HumanEval problems through the sandbox, stdin/stdout cases, modes,
extraction rules, and the usual ways a policy games a test harness."""

from __future__ import annotations

import gzip
import json
import time

import pytest

from thinkrl.rewards.base import Scored
from thinkrl.rewards.code import code_reward, extract_code, outputs_match, parse_tests

from .shared_data import DATA, needs_data


def block(code: str, lang: str = "python") -> str:
    return f"```{lang}\n{code}\n```"


@pytest.fixture(scope="module")
def humaneval():
    with gzip.open(DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert len(rows) == 164
    return rows


# ---------------------------------------------------------------- HumanEval


@needs_data
def test_humaneval_canonical_solutions_all_pass(humaneval):
    completions = ["<think>write it</think>Here is the function:\n" + block(r["prompt"] + r["canonical_solution"])
                   for r in humaneval]
    t = time.monotonic()
    scores = code_reward.scores(completions, tests=[r["test"] for r in humaneval],
                                entry_point=[r["entry_point"] for r in humaneval],
                                prompt=[r["prompt"] for r in humaneval])  # as the evaluator passes the row
    dt = time.monotonic() - t
    failed = [(r["task_id"], s) for r, s in zip(humaneval, scores) if s != Scored(1.0, "")]
    print(f"HumanEval canonical: {164 - len(failed)}/164 pass in {dt:.1f} s ({164 / dt:.0f} programs/s)")
    assert failed == []


@needs_data
def test_humaneval_stub_bodies_fail(humaneval):
    completions = [block(r["prompt"] + "    return None\n") for r in humaneval]
    scores = code_reward.scores(completions, tests=[r["test"] for r in humaneval],
                                entry_point=[r["entry_point"] for r in humaneval],
                                prompt=[r["prompt"] for r in humaneval])
    failed = [s for s in scores if s.value == 0.0]
    print(f"HumanEval `return None` bodies: {len(failed)}/164 fail")
    assert len(failed) == 164
    assert all(s.reason.startswith("0/1 tests passed; first failure: ") for s in failed)
    # the reason names the failing assertion
    assert any("AssertionError at: assert candidate(" in s.reason for s in failed), failed[:3]


@needs_data
def test_humaneval_wrong_entry_point_and_broken_solution(humaneval):
    r = humaneval[0]
    ok = block(r["prompt"] + r["canonical_solution"])
    scores = code_reward.scores([ok, ok, block(r["prompt"] + "    return 1/0\n"), block("def has_close(:")],
                                tests=[r["test"]] * 4, entry_point=[r["entry_point"], "nope", r["entry_point"],
                                                                    r["entry_point"]])
    assert scores[0] == Scored(1.0, "")
    assert scores[1].value == 0.0 and "entry point 'nope' is not defined" in scores[1].reason
    assert scores[2].value == 0.0 and "ZeroDivisionError" in scores[2].reason
    assert scores[3].value == 0.0 and "SyntaxError" in scores[3].reason


# ---------------------------------------------------------------- assert-style: what crosses


VALUES = r'''
import math
SCALE = 10 ** 30
def values():
    return [None, True, 0, -7, 2 ** 100, -2 ** 70, 0.1, -0.0, float("inf"), float("nan"), 1 - 2j, "é\ud800\n",
            b"\x00\xff", (1, (2,)), {1, 2}, frozenset({(1, "a")}), {(1, 2): [3], "k": {"n": None}}]
def sort_in_place(xs, table=None):
    xs.sort()
    if table is not None:
        table["done"] = True
    return None
def fail(kind):
    class Custom(ValueError):
        pass
    raise {"value": ValueError("bad"), "custom": Custom("mine"), "key": KeyError("k")}[kind]
def twice(f, x):
    return f(f(x))
def inc(x):
    print("chatter on stdout", x)
    return x + 1
if __name__ == "__main__":
    raise SystemExit("the main block does not run")
'''

VALUE_TESTS = [
    "v = values()\nassert v[:5] == [None, True, 0, -7, 2 ** 100] and type(v[1]) is bool and type(v[4]) is int",
    "v = values()\nassert v[5] == -2 ** 70 and v[6] == 0.1 and math.copysign(1, v[7]) == -1 and v[8] == math.inf",
    "v = values()\nassert math.isnan(v[9]) and v[10] == 1 - 2j and v[11] == 'é\\ud800\\n' and v[12] == b'\\x00\\xff'",
    "v = values()\nassert v[13] == (1, (2,)) and v[14] == {1, 2} and type(v[15]) is frozenset and v[16][(1, 2)] == [3]",
    "xs, t = [3, 1, 2], {}\nassert sort_in_place(xs, table=t) is None and xs == [1, 2, 3] and t == {'done': True}",
    "try:\n    fail('value')\nexcept ValueError as e:\n    assert str(e) == 'bad'\nelse:\n    assert False",
    "try:\n    fail('custom')\nexcept ValueError as e:\n    assert 'Custom' in str(e) and 'mine' in str(e)\n"
    "else:\n    assert False",
    "try:\n    fail('key')\nexcept KeyError:\n    pass\nelse:\n    assert False",
    "assert twice(inc, 1) == 3 and SCALE == 10 ** 30",
]


def test_assert_tests_see_genuine_values():
    """Plain values cross exactly (big ints, -0.0, nan, inf, complex, bytes, lone surrogates,
    nested containers), in-place changes to list and dict arguments are seen, exceptions keep
    their builtin class, the solution's functions can be passed to each other, its constants
    and imports are there, and its prints do not disturb anything."""
    (s,) = code_reward.scores([block(VALUES)], tests=[VALUE_TESTS])
    assert s == Scored(1.0, ""), s


# ---------------------------------------------------------------- stdin/stdout cases

SUM = "a, b = map(int, input().split())\nprint(a + b)"


def test_stdin_stdout_cases_tolerate_whitespace():
    cases = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 20", "output": "  30  "},
             {"input": "  5   6 \n\n", "output": "11"}]
    assert code_reward([block(SUM)], tests=[cases]) == [1.0]
    # several values on several lines compare token by token
    prog = "n = int(input())\nfor i in range(n):\n    print(i, i * i)"
    assert code_reward([block(prog)], tests=[[{"input": "3", "output": "0 0 1 1\n2   4"}]]) == [1.0]
    assert code_reward([block(prog)], tests=[[{"input": "3", "output": "0 0\n1 1"}]]) == [0.0]


def test_float_tolerance():
    prog = block("print(1 / 3, 2 / 3)")
    exact = [{"input": "", "output": "0.333333333 0.666666667"}]
    assert code_reward([prog], tests=[exact]) == [0.0]
    assert code_reward([prog], tests=[exact], float_tol=1e-6) == [1.0]
    assert code_reward([prog], tests=[[{**exact[0], "float_tol": 1e-6}]]) == [1.0]  # per case
    assert code_reward([prog], tests=[exact], float_tol=1e-12) == [0.0]
    # relative for large values, and only where both tokens are numbers
    assert outputs_match("1000000.1", "1000000.0", 1e-6)
    assert not outputs_match("abc 1.0", "abd 1.0", 1e-6)
    assert not outputs_match("nan", "1.0", 1e-6) and outputs_match("nan", "nan", 1e-6)
    assert outputs_match("3", "3.0000001", 1e-6) and not outputs_match("3", "3.0000001")


def test_fraction_and_all_modes():
    cases = [{"input": "1 1", "output": "2"}, {"input": "2 2", "output": "4"}, {"input": "2 3", "output": "6"}]
    (frac,) = code_reward.scores([block(SUM)], tests=[cases])
    assert frac.value == pytest.approx(2 / 3)
    assert frac.reason == "2/3 tests passed; first failure: wrong answer on test 3: expected '6', got '5'"
    (all_,) = code_reward.scores([block(SUM)], tests=[cases], mode="all")
    assert all_ == Scored(0.0, frac.reason)
    assert code_reward([block(SUM)], tests=[cases[:2]], mode="all") == [1.0]
    # assert-style tests given as a list count one by one
    asserts = ["assert inc(1) == 2", "assert inc(2) == 3", "assert inc(3) == 5"]
    (s,) = code_reward.scores([block("def inc(x):\n    return x + 1")], tests=[asserts])
    assert s.value == pytest.approx(2 / 3) and s.reason.startswith("2/3 tests passed; first failure: test 3: "
                                                                   "AssertionError at: assert inc(3) == 5")
    assert code_reward([block("def inc(x):\n    return x + 1")], tests=[asserts], mode="all") == [0.0]
    with pytest.raises(ValueError):
        code_reward([block(SUM)], tests=[cases], mode="most")


def test_failures_explain_themselves():
    loop = block("while True:\n    pass")
    crash = block("print(1 // 0)")
    hog = block("x = bytearray(8 * 2 ** 30)")
    case = [{"input": "", "output": "1"}]
    scores = code_reward.scores([loop, crash, hog, loop], tests=[case, case, case, ["assert True"]], timeout_s=1)
    assert scores[0] == Scored(0.0, "0/1 tests passed; first failure: timeout after 1 s")
    assert scores[1].value == 0.0 and "runtime error: exit code 1: ZeroDivisionError" in scores[1].reason
    assert scores[2] == Scored(0.0, "0/1 tests passed; first failure: memory limit")
    assert scores[3].value == 0.0 and "timeout after 1 s" in scores[3].reason


def test_hostile_solutions_score_zero():
    """Exiting before the tests run, faking the harness's output, or attacking the host does
    not pass a test."""
    hacks = [
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        "def solve():\n    import os\n    os._exit(0)",
        "print('PASS 0')\nprint('DONE')\ndef solve():\n    return 0",
        "import os\nos.kill(os.getppid(), 9)",
        "raise SystemExit(0)",
        # neutering the tests by patching builtins
        "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.range = lambda *a: []\n"
        "def solve():\n    return 0",
        # posing as a sandbox failure, which would score None (not applicable) instead of 0
        "import sys\nsys.stderr.write('thinkrl-sandbox: setup failed [namespaces] no\\n')\nsys.exit(125)",
    ]
    tests = [["assert solve() == 42"]] * len(hacks)
    scores = code_reward.scores([block(h) for h in hacks], tests=tests)
    assert [s.value for s in scores] == [0.0] * len(hacks), scores
    assert "exited before the tests finished" in scores[2].reason
    assert code_reward([block("def solve():\n    return 42")], tests=tests[:1]) == [1.0]
    patched_range = "import builtins\nbuiltins.range = lambda *a: []\ndef solve(n):\n    return 0"
    loop_test = "for n in range(3):\n    assert solve(n) == n"
    assert code_reward([block(patched_range)], tests=[[loop_test]]) == [0.0]


# ---------------------------------------------------------------- extraction and test formats


def test_extraction_rules():
    assert extract_code("```python\nprint(1)\n```") == "print(1)"
    assert extract_code("```\nprint(2)\n```") == "print(2)"
    # the last python block; blocks in other languages are skipped
    assert extract_code("```python\nprint(1)\n```\nthen\n```py\nprint(2)\n```\n```bash\nls\n```") == "print(2)"
    # reasoning does not count
    assert extract_code("<think>```python\nprint(1)\n```</think>The answer is above.") is None
    assert extract_code("<think>```python\nprint(1)\n```</think>```python\nprint(3)\n```") == "print(3)"
    assert extract_code("<think>still thinking ```python\nprint(1)\n```") is None
    # an answer block that is code
    assert extract_code("<think>x</think><answer>\nn = int(input())\nprint(n * 2)\n</answer>") == \
        "n = int(input())\nprint(n * 2)"
    assert extract_code("<answer>42</answer>") is None
    assert extract_code("<answer>the function returns the sum</answer>") is None
    assert extract_code("no code here") is None

    tests = [[{"input": "", "output": "1"}]] * 4
    scores = code_reward.scores(["<think>```python\nprint(1)\n```</think>done", "print(1)",
                                 "<think>```python\nprint(1)\n```", "<answer>print(1)</answer>"], tests=tests)
    assert scores[:3] == [Scored(0.0, "no code block")] * 3
    assert scores[3] == Scored(1.0, "")


def test_test_formats():
    ok = block(SUM)
    cases = [{"input": "1 2", "output": "3"}]
    asserts = ["assert 1 + 1 == 2"]
    as_json = [json.dumps(cases), json.dumps(asserts), json.dumps({"inputs": ["1 2", "3 4"], "outputs": ["3", "7"]}),
               "assert 1 + 1 == 2\n"]
    plain = block("x = 1")
    assert code_reward([ok, plain, ok, plain], tests=as_json) == [1.0] * 4
    assert code_reward([ok, plain], tests=[json.dumps([{"input": "1 2", "output": "4"}]),
                                           json.dumps(["assert x == 2"])]) == [0.0, 0.0]
    assert parse_tests(json.dumps(cases)) == ("io", [{"input": "1 2", "output": "3"}])
    assert parse_tests({"input": ["1", "2"], "output": "3"}) == ("io", [{"input": "1\n2", "output": "3"}])
    assert parse_tests("def check(candidate):\n    assert candidate(1)") == \
        ("asserts", ["def check(candidate):\n    assert candidate(1)"])
    # no tests: not applicable
    assert code_reward.scores([ok], tests=None) == [Scored(None, "no tests")]
    assert code_reward.scores([ok, ok, ok], tests=[None, [], ""]) == [Scored(None, "no tests")] * 3
    (bad,) = code_reward.scores([ok], tests=[[1, 2]])
    assert bad.value is None and bad.reason.startswith("unreadable tests")
    with pytest.raises(ValueError):
        code_reward([ok, ok], tests=[cases])
    # an entry point given once applies to every row; check() is called after tests that define it
    check = "def check(candidate):\n    assert candidate(2) == 4"
    sq = block("def sq(x):\n    return x * x")
    assert code_reward([sq] * 2, tests=[check] * 2, entry_point="sq") == [1.0, 1.0]
    assert code_reward([sq], tests=[["assert sq(3) == 9", check]], entry_point="sq") == [1.0]
    # float_tol per row (a dataset column)
    third = block("print(1 / 3)")
    rows = [[{"input": "", "output": "0.3333333"}]] * 2
    assert code_reward([third] * 2, tests=rows, float_tol=[1e-6, None]) == [1.0, 0.0]


def test_a_sandbox_failure_is_not_a_zero(monkeypatch):
    """When the sandbox itself fails the program never ran: None (not applicable), not 0."""
    import dataclasses

    from thinkrl.sandbox import detect as sandbox  # `_iso` and `isolation` live in sandbox.detect

    monkeypatch.setattr(sandbox, "_iso", dataclasses.replace(sandbox.isolation(), unshare_flags=0x1))
    (s,) = code_reward.scores([block("x = 1")], tests=[["assert x == 1"]])
    assert s.value is None and s.reason.startswith("sandbox setup failed [namespaces]"), s
