"""`sandbox.run_pair`: a judge and a program in two sandboxed runs that talk only through the
parent, line by line; and the pool running pairs beside single runs."""

from __future__ import annotations

import dataclasses

import pytest

from thinkrl.sandbox import Job, Limits, PairJob, SandboxPool, isolation, run_pair
from thinkrl.sandbox import slots

# asks the program three questions, prints what it hears; "C " lines are requests
JUDGE = r'''
import sys
print("config:", sys.stdin.readline().strip(), flush=True)
for i in range(3):
    print("C question %d" % i, flush=True)
    answer = sys.stdin.readline()
    print("heard:", answer.strip() if answer else "(end of file)", flush=True)
print("done", flush=True)
'''

ECHO = r'''
import sys
for line in sys.stdin:
    print("answer to", line.strip(), flush=True)
'''


def test_the_parent_relays_lines_and_keeps_only_the_judges_output():
    judge, program = run_pair(JUDGE, "settings\n", ECHO, Limits(cpu_s=2, wall_s=10))
    assert judge.ok and program.ok, (judge, program)
    assert judge.stdout.splitlines() == ["config: settings", "heard: answer to question 0",
                                         "heard: answer to question 1", "heard: answer to question 2", "done"]
    assert program.stdout == ""  # relayed, not kept


def test_when_the_program_ends_the_judge_reads_end_of_file():
    for code, status in (("import os\nos._exit(3)", "error"), ("while True:\n    pass", "timeout"),
                         ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", "output_limit")):
        judge, program = run_pair(JUDGE, "s\n", code, Limits(cpu_s=1, wall_s=10, max_output_bytes=100_000))
        assert program.status == status, (code, program)
        assert judge.ok and "heard: (end of file)" in judge.stdout and judge.stdout.endswith("done\n"), judge


def test_one_wall_clock_for_the_pair():
    judge, program = run_pair(JUDGE, "s\n", "import time\ntime.sleep(60)", Limits(cpu_s=2, wall_s=1))
    assert judge.status == program.status == "timeout", (judge, program)
    assert judge.wall_s < 5


def test_the_program_cannot_reach_the_judges_files():
    if not isolation().dedicated_uids:
        pytest.skip("without a uid per run, file permissions do not separate the two runs")
    judge = "import os\nopen('secret.txt', 'w').write('42')\nprint('C ' + os.getcwd(), flush=True)\n" \
            "import sys\nprint('heard:', sys.stdin.readline().strip())"
    program = ("import sys\npath = sys.stdin.readline().strip()\ntry:\n    print(open(path + '/secret.txt').read())\n"
               "except OSError as e:\n    print(type(e).__name__)")
    j, p = run_pair(judge, "", program, Limits(cpu_s=2, wall_s=10))
    assert j.stdout.strip() == "heard: PermissionError", (j, p)


def test_the_pool_runs_pairs_beside_single_runs():
    with SandboxPool(2) as pool:
        results = pool.map([PairJob(JUDGE, "a\n", ECHO), Job("print(7)"), PairJob(JUDGE, "b\n", ECHO)] * 2)
    assert [r.stdout for r in results[1::3]] == ["7\n", "7\n"]
    assert all(r[0].stdout.startswith("config: ") and r[0].stdout.endswith("done\n") for i, r in enumerate(results)
               if i % 3 != 1)
    assert not slots._slots._held  # every uid slot is back


def test_a_sandbox_failure_fails_the_pair(monkeypatch):
    from thinkrl.sandbox import detect

    monkeypatch.setattr(detect, "_iso", dataclasses.replace(detect.isolation(), unshare_flags=0x1))
    judge, program = run_pair(JUDGE, "s\n", ECHO)
    assert judge.status == program.status == "sandbox_error", (judge, program)
    assert not slots._slots._held
