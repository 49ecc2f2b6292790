"""Seconds per GRPO step, rollout tokens/s and peak RSS on the embedded tiny model, as JSON.

    .venv/bin/python bench/step_speed.py [--steps 20] [section.key=value ...]

Medians over the measured steps (this kind of machine drifts ±30% over minutes). Absolute
numbers mean something only beside the machine they came from, which is printed too.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time

import torch

from thinkrl.config import load_config
from thinkrl.train.grpo import GRPOTrainer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(None, ["run.progress=false", "data.eval=none", "train.save_every=0",
                             f"train.steps={args.steps + args.warmup}", *args.overrides])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = GRPOTrainer(cfg, tmp)
        rows = []
        for i in range(args.steps + args.warmup):
            t = time.perf_counter()
            m = trainer.train_step()
            m["wall"] = time.perf_counter() - t
            m["tokens"] = m["completion_len"] * cfg.completions_per_step
            if i >= args.warmup:
                rows.append(m)
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    result = {
        "bench": "grpo_step",
        "model": cfg.model.path,
        "completions_per_step": cfg.completions_per_step,
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "steps_measured": len(rows),
        "seconds_per_step": med("wall"),
        "rollout_tokens_per_second": statistics.median(r["tokens"] / r["timing/generate"] for r in rows),
        "generate_seconds": med("timing/generate"),
        "reward_seconds": med("timing/reward"),
        "update_seconds": med("timing/update"),
        "mean_completion_tokens": med("completion_len"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "device": str(trainer.device), "torch": torch.__version__, "python": sys.version.split()[0]},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
