"""Reward throughput and agreement on real data (../shared/data), as JSON.

    .venv/bin/python bench/reward_speed.py [--data ../shared/data] [--repeat 3]

- math verifications per second: plain numbers (the exact in-process path), and math-verify
  through the time-limited worker pool (MATH-500 worked solutions against their answers) with
  1 worker, all workers, and in-process for comparison;
- code executions per second: the 164 HumanEval canonical solutions through the sandbox pool;
- agreement: GSM8K references that parse, MATH-500 solutions that verify, labelled model
  answers whose verdict matches their label, HumanEval canonical solutions that pass and
  `return None` bodies that fail.

Absolute rates mean something only beside the machine they came from, which is printed too.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

from thinkrl.rewards.code import code_reward
from thinkrl.rewards.math import accuracy_reward, parses
from thinkrl.rewards.pool import WorkerPool
from thinkrl.rewards import math as rmath

ROOT = Path(__file__).resolve().parents[1]


def rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def math_bench(data: Path, repeat: int) -> dict:
    gsm = rows(data / "gsm8k" / "test.jsonl")
    math500 = rows(data / "math500" / "test.jsonl")
    result: dict = {}

    # plain numbers: GSM8K references against themselves and a wrong number
    refs = [r["answer"] for r in gsm]
    comps = [f"<think>x</think> <answer>{rmath.reference_answer(r)}</answer>" for r in refs]
    comps += [f"<think>x</think> <answer>{int(rmath.reference_answer(r)) + 1}</answer>" for r in refs]
    secs, scores = timed(lambda: accuracy_reward(comps, answer=refs + refs), repeat)
    result["plain_numbers_per_s"] = round(len(comps) / secs)
    result["gsm8k_references_parse"] = f"{sum(parses(r) for r in refs)}/{len(refs)}"
    assert scores == [1.0] * len(refs) + [0.0] * len(refs)

    # math-verify: MATH-500 worked solutions against their closing answers
    comps = [r["answer"].rsplit("The answer is:", 1)[0] for r in math500]
    golds = [r["answer"].rsplit("The answer is:", 1)[1] for r in math500]
    for label, workers in (("in_process", 0), ("pool_1_worker", 1), (f"pool_{os.cpu_count()}_workers", None)):
        if workers != 0:  # start the workers before the clock, as a training run does once
            pool = WorkerPool(workers=workers or None, warmup="math_verify")
            pool.map(abs, [(1,)] * pool.size, timeout_s=60)
        rmath._parsed_reference.cache_clear()

        def run():
            rmath._parsed_reference.cache_clear()
            if workers == 0:
                return accuracy_reward(comps, answer=golds, source="boxed", workers=0)
            outcomes = pool.map(rmath.judge, [(rmath.reference_answer(g), rmath.extract_answer(c, "boxed"))
                                              for c, g in zip(comps, golds)], timeout_s=10)
            return [1.0 if o.status == "ok" and o.value == "equal" else 0.0 for o in outcomes]

        secs, scores = timed(run, repeat)
        result[f"math_verify_per_s_{label}"] = round(len(comps) / secs, 1)
        result["math500_solutions_verify"] = f"{sum(s == 1.0 for s in scores)}/{len(scores)}"
        if workers != 0:
            pool.close()

    # agreement with the labelled answers of three real models
    agree = total = 0
    for path in sorted((data / "labeled_responses").glob("*.jsonl")):
        for problem in rows(path):
            outs = [o for o in problem["outputs"] if str(o["label"]) in ("True", "False")]
            scores = accuracy_reward([o["response"].replace("ки", "") for o in outs],
                                     answer=[problem["ground_truth"]] * len(outs), source="final")
            agree += sum((s == 1.0) == (str(o["label"]) == "True") for s, o in zip(scores, outs))
            total += len(outs)
    result["labelled_answers_agree"] = f"{agree}/{total} ({100 * agree / total:.1f}%)"
    return result


def code_bench(data: Path, repeat: int) -> dict:
    problems = rows(data / "humaneval" / "HumanEval.jsonl.gz")
    tests = [p["test"] for p in problems]
    entry = [p["entry_point"] for p in problems]
    good = [f"```python\n{p['prompt']}{p['canonical_solution']}```" for p in problems]
    # the prompt ends inside the function to write: its body becomes `return None`
    bad = [f"```python\n{p['prompt']}    return None\n```" for p in problems]
    secs, scores = timed(lambda: code_reward(good, tests=tests, entry_point=entry), repeat)
    bad_scores = code_reward(bad, tests=tests, entry_point=entry)
    return {"code_executions_per_s": round(len(good) / secs, 1),
            "humaneval_canonical_pass": f"{sum(s == 1.0 for s in scores)}/{len(scores)}",
            "humaneval_return_none_fail": f"{sum(s == 0.0 for s in bad_scores)}/{len(bad_scores)}"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions; the best is kept")
    args = ap.parse_args()
    data = Path(args.data)
    result = {"bench": "rewards", "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    result.update(math_bench(data, args.repeat))
    result.update(code_bench(data, args.repeat))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
