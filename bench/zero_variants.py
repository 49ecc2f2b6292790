"""The main job under variants of the objective and of the rollouts, on the embedded task, as JSON:
outcome vs process supervision, dynamic sampling, asynchronous rollouts, Ray workers.

    .venv/bin/python bench/zero_variants.py [--seeds 0 1 2] [--steps 100] [--eval-every 10]
        [--eval-size 200] [--jobs 2] [--prm DIR] [--variants outcome process_rule ...]

Each variant is `thinkrl zero` (the main job: 8 questions x 8 samples, lr 2e-5, no KL) with
the same steps and seeds, one thread per run, `--jobs` runs at a time. Variants:

    outcome               accuracy + format, one advantage per completion (the main job)
    process_rule          the rule step reward `column_steps` alone (objective.advantage=process)
    process_rule_outcome  column_steps, with accuracy + format added to each completion's last step
    process_learned       the learned step reward `process_model` (a PRM from `thinkrl rm`, --prm)
    dynamic               outcome, with rollout.dynamic_sampling (max 4 rounds)
    async1                outcome, rollout.async_steps=1 (samples one policy version old, TIS-corrected)
    ray                   outcome, rollout.engine=ray with 2 workers (Ray installed; a local cluster of 3 CPUs)
    ray_async1            ray, with rollout.async_steps=1 (the workers sample step t+1 while step t updates)

Reported per variant: held-out accuracy (T 0.6, top-p 0.95, --eval-size questions) at the end,
the first evaluated step at which it reached 90% (None: never), seconds per step (median over
the run's steps) and wall time, as the mean over seeds with its standard error
(sample std / sqrt(seeds)), and each seed's numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTCOME = "rewards.weights={accuracy: 1.0, format: 1.0}"
VARIANTS = {
    "outcome": [OUTCOME],
    "process_rule": ["objective.advantage=process", "rewards.weights={}", "rewards.step_weights={column_steps: 1.0}"],
    "process_rule_outcome": ["objective.advantage=process", OUTCOME, "rewards.step_weights={column_steps: 1.0}"],
    "process_learned": ["objective.advantage=process", "rewards.weights={}",
                        "rewards.step_weights={process_model: 1.0}", "rewards.params={process_model: {path: PRM}}"],
    "dynamic": [OUTCOME, "rollout.dynamic_sampling=true", "rollout.max_sample_rounds=4"],
    "async1": [OUTCOME, "rollout.async_steps=1"],
    "ray": [OUTCOME, "rollout.engine=ray", "rollout.workers=2", "ray.num_cpus=3"],
    "ray_async1": [OUTCOME, "rollout.engine=ray", "rollout.workers=2", "ray.num_cpus=3", "rollout.async_steps=1"],
}


def run_one(variant: str, seed: int, args, root: Path) -> dict:
    out = root / f"{variant}-{seed}"
    overrides = [o.replace("PRM", str(args.prm)) for o in VARIANTS[variant]] + [
        f"run.seed={seed}", f"train.steps={args.steps}", f"eval.every={args.eval_every}",
        f"data.eval_size={args.eval_size}", "train.save_every=0", "run.threads=1"]
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "thinkrl.cli", "zero", "--out", str(out), "--no-progress",
                           *overrides], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    wall = time.perf_counter() - t
    if proc.returncode:
        return {"variant": variant, "seed": seed, "error": proc.stderr[-2000:]}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if r.get("eval/accuracy") is not None]
    steps = [r for r in rows if r["step"] > 0 and "step_seconds" in r]
    reached = next((s for s, a in evals if a >= 0.9), None)
    res = {"variant": variant, "seed": seed, "accuracy_start": evals[0][1], "accuracy_end": evals[-1][1],
           "first_step_90": reached, "seconds_per_step": statistics.median(r["step_seconds"] for r in steps),
           "wall_seconds": round(wall, 1), "curve": evals}
    if "async" in variant or "ray" in variant:
        res["sync_seconds"] = statistics.median(r.get("timing/sync", 0.0) for r in steps)
        res["generate_seconds"] = statistics.median(r["timing/generate"] for r in steps)
    if "async" in variant:
        res["tis_weight_mean"] = statistics.mean(r["async/tis_weight"] for r in steps)
        res["tis_weight_max"] = max(r["async/tis_weight_max"] for r in steps)
    if variant == "dynamic":
        res["rounds_mean"] = statistics.mean(r["sampling/rounds"] for r in steps)
        res["filtered_frac_mean"] = statistics.mean(r["sampling/filtered_frac"] for r in steps)
        res["short_steps"] = sum(r["sampling/short"] for r in steps)
    return res


def mean_se(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "se": None, "n": 0}
    se = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else None
    return {"mean": statistics.mean(vals), "se": se, "n": len(vals)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-size", type=int, default=200)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--prm", default=None, help="a process reward model directory (thinkrl rm, step labels)")
    p.add_argument("--variants", nargs="+", default=["outcome", "process_rule", "process_rule_outcome",
                                                     "process_learned", "dynamic"], choices=list(VARIANTS))
    p.add_argument("--keep", default=None, help="keep the run directories here")
    args = p.parse_args()
    variants = [v for v in args.variants if v != "process_learned" or args.prm]
    root = Path(args.keep or tempfile.mkdtemp(prefix="zero-variants-"))
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(v, s) for s in args.seeds for v in variants]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda job: run_one(*job, args, root), jobs))
    summary = {}
    for v in variants:
        mine = [r for r in runs if r["variant"] == v and "error" not in r]
        keys = ["accuracy_start", "accuracy_end", "first_step_90", "seconds_per_step", "wall_seconds"]
        keys += [k for k in ("generate_seconds", "sync_seconds", "tis_weight_mean") if mine and k in mine[0]]
        summary[v] = {k: mean_se([r[k] for r in mine]) for k in keys}
        summary[v]["never_90"] = sum(r["first_step_90"] is None for r in mine)
    print(json.dumps({"bench": "zero_variants", "machine": platform.machine(), "cpus": os.cpu_count(),
                      "steps": args.steps, "eval_every": args.eval_every, "eval_size": args.eval_size,
                      "seeds": args.seeds, "jobs": args.jobs, "summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
