"""How thinkrl's step time and peak memory grow with group size G, completion length and model
width, as JSON and a PNG of the three curves.

    .venv/bin/python bench/scaling.py [--steps 4] [--warmup 1] [--groups 4,8,16] [--lengths 40,80,160]
                                      [--widths 64,128,256] [--threads 0] [--png docs/scaling.png] [--out scaling.json]

Each curve moves one knob away from a common baseline (G 8, 8 questions per step, at most 80
new tokens, hidden size 128) and keeps the rest. Every configuration runs in a subprocess of
its own, so its peak RSS (`ru_maxrss`) is its own.

The models are randomly initialised Qwen2s shaped like the embedded tiny model (4 layers, 4
heads, 2 key/value heads, intermediate = 4 × hidden, tied embeddings, its 406-token
tokenizer), hidden size 64, 128 or 256, saved to a temporary directory. Such a model writes
noise, so: no stop string (a completion ends at EOS, which a near-uniform model rarely
samples, or at max_new_tokens: each configuration's mean completion length is reported),
and the reward is the share of digits in the completion, which differs between any two
samples, so every sample has a non-zero advantage and goes through the backward pass. This
is the expensive case: the trained tiny model stops at `</answer>` after about 33 tokens and
most of its groups agree (bench/step_speed.py measures that case).

Medians over the measured steps; absolute numbers mean something only beside the machine
they came from, which is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE = {"group_size": 8, "max_new_tokens": 80, "hidden_size": 128}
PROMPTS_PER_STEP = 8


def digit_share(completions, **kwargs):
    """The reward of this benchmark: the share of digit characters, a different number for
    nearly every noisy completion (so nearly no advantage is zero)."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_model(hidden: int, directory: Path, seed: int) -> int:
    """A randomly initialised Qwen2 like the tiny model's, with the tiny tokenizer; returns its parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from thinkrl.task import TINY_DIR

    config = AutoConfig.from_pretrained(TINY_DIR)
    config.hidden_size = hidden
    config.intermediate_size = 4 * hidden
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(TINY_DIR).save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def worker(args) -> dict:
    from thinkrl.config import load_config
    from thinkrl.train.grpo import GRPOTrainer

    total = args.steps + args.warmup
    n = args.group_size * PROMPTS_PER_STEP
    overrides = [
        "run.progress=false", "data.eval=none", "train.save_every=0", f"train.steps={total}", f"run.seed={args.seed}",
        f"run.threads={args.threads}", "model.device=cpu", "model.dtype=float32", f"model.path={args.model}",
        f"rollout.group_size={args.group_size}", f"train.prompts_per_step={PROMPTS_PER_STEP}",
        f"train.micro_batch_size={n}", f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.stop=[]",
        "rewards.weights={'scaling:digit_share': 1.0}", "rewards.isolate=false",
    ]
    cfg = load_config(None, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = GRPOTrainer(cfg, tmp)
        rss_before = rss_now_mb()
        rows = []
        for _ in range(total):
            t = time.perf_counter()
            m = trainer.train_step()
            m["wall"] = time.perf_counter() - t
            rows.append(m)
    measured = rows[args.warmup:]
    med = lambda k: statistics.median(r[k] for r in measured)  # noqa: E731
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seconds_per_step": med("wall"),
        "generate_seconds": med("timing/generate"),
        "update_seconds": statistics.median(r["timing/update"] + r["timing/logprobs"] for r in measured),
        "reward_seconds": med("timing/reward"),
        "mean_completion_tokens": statistics.mean(r["completion_len"] for r in measured),
        "rollout_tokens_per_s": statistics.median(r["completion_len"] * n / r["timing/generate"] for r in measured),
        "zero_advantage_group_frac": statistics.mean(r["zero_std_frac"] for r in measured),
        "peak_rss_mb": peak,
        "rss_before_train_mb": rss_before,
        "rss_growth_mb": peak - rss_before,
    }


def run_config(point: dict, model_dir: Path, args, tmp: Path) -> dict:
    out_json = tmp / "result.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               PYTHONWARNINGS="ignore")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, __file__, "--_worker", "--_json", str(out_json), "--_model", str(model_dir),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed),
           "--threads", str(args.threads), "--_group-size", str(point["group_size"]),
           "--_max-new-tokens", str(point["max_new_tokens"])]
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:])
        raise SystemExit(f"configuration {point} failed (exit {proc.returncode})")
    res = json.loads(out_json.read_text())
    res["process_seconds"] = time.perf_counter() - t
    res["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return res


def plot(result: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [("group_size", "group size G (8 questions per step)"),
              ("max_new_tokens", "max new tokens (mean length in labels)"),
              ("hidden_size", "hidden size (parameters in labels)")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, (knob, label) in zip(axes, curves):
        pts = sorted(result["curves"][knob], key=lambda p: p[knob])
        xs = [p[knob] for p in pts]
        ax.plot(xs, [p["seconds_per_step"] for p in pts], "o-", color="C0", label="step")
        ax.plot(xs, [p["generate_seconds"] for p in pts], "s--", color="C1", label="generation")
        ax.plot(xs, [p["update_seconds"] for p in pts], "^--", color="C2", label="update")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(label)
        ax.set_ylabel("seconds per step (median)")
        ax.set_ylim(0, 1.2 * max(p["seconds_per_step"] for p in pts))
        ax.grid(alpha=0.3)
        for p in pts:
            note = (f"{p['mean_completion_tokens']:.0f} tok" if knob == "max_new_tokens"
                    else f"{p['parameters'] / 1e6:.2f}M" if knob == "hidden_size" else f"{p['completions']} seq")
            ax.annotate(note, (p[knob], p["seconds_per_step"]), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=8)
        twin = ax.twinx()
        twin.plot(xs, [p["peak_rss_mb"] for p in pts], "d:", color="C3", label="peak RSS")
        twin.set_ylabel("peak RSS (MB)", color="C3")
        twin.set_ylim(0, 1.2 * max(p["peak_rss_mb"] for p in pts))
        if knob == "group_size":
            lines = ax.get_legend_handles_labels()
            extra = twin.get_legend_handles_labels()
            ax.legend(lines[0] + extra[0], lines[1] + extra[1], loc="lower right", fontsize=8)
    m = result["machine"]
    fig.suptitle(f"thinkrl GRPO step on CPU ({m['cores']} cores, {m['threads']} torch threads, fp32; "
                 f"random-init Qwen2 like the tiny model, every sample updated) — {m['date']}", fontsize=10)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="measured steps per configuration")
    ap.add_argument("--warmup", type=int, default=1, help="steps run first and left out")
    ap.add_argument("--groups", type=ints, default=[4, 8, 16])
    ap.add_argument("--lengths", type=ints, default=[40, 80, 160])
    ap.add_argument("--widths", type=ints, default=[64, 128, 256])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0 = torch's default, all cores); 1 on a machine that other work is using")
    ap.add_argument("--png", help="draw the three curves here, e.g. docs/scaling.png")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_json", help=argparse.SUPPRESS)
    ap.add_argument("--_model", dest="model", help=argparse.SUPPRESS)
    ap.add_argument("--_group-size", dest="group_size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_max-new-tokens", dest="max_new_tokens", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        Path(args._json).write_text(json.dumps(worker(args)))
        return 0

    import torch

    load = os.getloadavg()[0]
    if not args.threads and load > 0.5:
        print(f"note: the load average is already {load:.1f} on {os.cpu_count()} cores; with every core in use, "
              "torch's spinning threads can make steps many times slower: consider --threads 1",
              file=sys.stderr, flush=True)
    t_all = time.perf_counter()
    points = ([dict(BASE, group_size=g) for g in args.groups] + [dict(BASE, max_new_tokens=n) for n in args.lengths]
              + [dict(BASE, hidden_size=h) for h in args.widths])
    unique = list({tuple(sorted(p.items())): p for p in points}.values())
    results: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory(prefix="scaling_") as tmp:
        tmp = Path(tmp)
        params = {}
        for h in sorted({p["hidden_size"] for p in unique}):
            params[h] = make_model(h, tmp / f"h{h}", args.seed)
        for i, p in enumerate(unique, 1):
            print(f"[{i}/{len(unique)}] G={p['group_size']} max_new_tokens={p['max_new_tokens']} "
                  f"hidden={p['hidden_size']} ...", file=sys.stderr, flush=True)
            res = run_config(p, tmp / f"h{p['hidden_size']}", args, tmp)
            results[tuple(sorted(p.items()))] = dict(p, parameters=params[p["hidden_size"]],
                                                     completions=p["group_size"] * PROMPTS_PER_STEP, **res)
    curves = {}
    for knob, values in (("group_size", args.groups), ("max_new_tokens", args.lengths), ("hidden_size", args.widths)):
        curves[knob] = [results[tuple(sorted(dict(BASE, **{knob: v}).items()))] for v in values]
    result = {
        "bench": "scaling",
        "baseline": dict(BASE, prompts_per_step=PROMPTS_PER_STEP),
        "curves": curves,
        "settings": {"steps_measured": args.steps, "warmup_steps_excluded": args.warmup, "seed": args.seed,
                     "model": "random-init Qwen2 like the tiny model (4 layers, 4 heads, 2 kv heads, "
                              "intermediate 4 × hidden, vocab 406, tied embeddings)",
                     "reward": "share of digit characters (every sample updated)", "stop": "EOS only",
                     "dtype": "float32", "lr": 2e-5, "beta": 0.0, "mu": 1},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": args.threads or torch.get_num_threads(), "torch": torch.__version__,
                    "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d")},
        "bench_seconds": time.perf_counter() - t_all,
    }
    if args.png:
        plot(result, args.png)
        result["png"] = args.png
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    print(f"\n{'curve':15s} {'value':>6s} {'s/step':>8s} {'gen s':>7s} {'upd s':>7s} {'mean tok':>8s} "
          f"{'peak RSS MB':>11s} {'growth MB':>9s}")
    for knob, pts in curves.items():
        for p in pts:
            print(f"{knob:15s} {p[knob]:6d} {p['seconds_per_step']:8.2f} {p['generate_seconds']:7.2f} "
                  f"{p['update_seconds']:7.2f} {p['mean_completion_tokens']:8.1f} {p['peak_rss_mb']:11.0f} "
                  f"{p['rss_growth_mb']:9.0f}")
    print(f"\nbench took {result['bench_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
