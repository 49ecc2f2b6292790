"""thinkrl against TRL's GRPOTrainer on the same work, on this machine: rounds, threads, tasks.

    .venv/bin/python bench/vs_trl.py [--rounds 3] [--threads 1,2] [--tasks embedded,second] [--steps 20]
        [--warmup 2] [--eval-size 200] [--seed 0] [--out results.json] [--quick]

Needs TRL (`pip install .[bench]`). Both frameworks train a task's model with GRPO on its train
rows, with thinkrl's `accuracy` and `format` rewards, the same questions in the same order, the
same group size, batch, completion length, optimiser, schedule and seed (the knob mapping is
printed). Tasks: `embedded` (the packaged 1M-parameter Qwen2, R1-Zero template, 80 new tokens)
and `second` (bench/second_task.py: its own tokenizer and model, short prompts, 48 new tokens).

Every round runs, for each task and thread count, thinkrl and then TRL, or TRL and then thinkrl
(the order alternates from round to round), each in a subprocess of its own whose whole tree
(workers included) gets the thread count: OMP_NUM_THREADS, MKL_NUM_THREADS and torch's threads.
The parent samples the summed RSS of each subprocess and all its descendants every
--sample-ms (bench/tree_rss.py). After the rounds a third kind of subprocess judges, per task
and thread count, the base model and the two models trained in the first round with thinkrl's
held-out evaluation (the same questions and sampling seed for all three). Speed is the wall
time of the training loop per measured step (see bench/vs_trl_sides.py for the exact span),
and the median step as well; ratios are thinkrl steps/s over TRL steps/s, per round, then
their median, min and max over the rounds.
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
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_trl_sides as sides  # noqa: E402
from tree_rss import TreeSampler  # noqa: E402

SIDES = str(Path(sides.__file__).resolve())
TARGETS = {1: 2.5, 2: 2.0}  # issue 18: thinkrl/TRL steps/s by wall time per step, per thread count

MAPPING = [  # (knob, thinkrl, TRL)
    ("model", "model.path=the task's directory", "AutoModelForCausalLM.from_pretrained(same, dtype=float32) passed as model"),
    ("tokenizer", "thinkrl.policy.load_tokenizer(model dir), left padding", "processing_class = the same tokenizer object"),
    ("prompts", "the task's train.jsonl, render(question, task template)", "dataset column 'prompt' = the same rendered text"),
    ("question order", "PromptSampler(seed)", "the same PromptSampler order written into the dataset, shuffle_dataset=False"),
    ("rewards", "rewards.weights={accuracy: 1, format: 1}", "reward_funcs=[accuracy, format] (thinkrl.rewards.get_reward wrapped), reward_weights=[1, 1]"),
    ("group size G", f"rollout.group_size={sides.G}", f"num_generations={sides.G}"),
    ("prompts per step", f"train.prompts_per_step={sides.PROMPTS_PER_STEP}", f"per_device_train_batch_size={sides.G * sides.PROMPTS_PER_STEP}, gradient_accumulation_steps=1"),
    ("micro-batch", f"train.micro_batch_size={sides.G * sides.PROMPTS_PER_STEP}", "the whole batch in one forward/backward"),
    ("completion length", "rollout.max_new_tokens=task's (80 embedded, 48 second)", "max_completion_length=the same"),
    ("stop", "rollout.stop=task's ['</answer>'] (decoded-text check)", "generation_config.eos_token_id=[eos, the stop string's single token id]"),
    ("sampling", f"temperature={sides.TEMPERATURE}, top_p=1, top_k=0", f"temperature={sides.TEMPERATURE}, top_p=1.0, top_k=0"),
    ("optimiser", f"AdamW lr={sides.LR}, betas={sides.BETAS}, weight_decay={sides.WEIGHT_DECAY}", "optimizers=(torch.optim.AdamW(same, eps=1e-8), ...); learning_rate, adam_beta1/2 set alike"),
    ("schedule", f"warmup_steps={sides.WARMUP_STEPS}, constant: lr×(i+1)/{sides.WARMUP_STEPS}, then lr", "LambdaLR(thinkrl.train.grpo.lr_lambda) passed in (HF's constant_with_warmup gives lr 0 at step 1)"),
    ("clip, KL, μ, loss", f"max_grad_norm={sides.MAX_GRAD_NORM}, beta=0, mu=1, eps_low={sides.EPSILON}, loss_agg=grpo", f"max_grad_norm={sides.MAX_GRAD_NORM}, beta=0.0, num_iterations=1, epsilon={sides.EPSILON}, loss_type='grpo', scale_rewards='group'"),
    ("precision", "model.dtype=float32, device cpu", "bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False"),
    ("threads", "run.threads=N + OMP/MKL_NUM_THREADS=N for the process tree", "torch.set_num_threads(N) + the same environment"),
    ("seed", "run.seed", "seed (TrainingArguments)"),
]

DIFFERENCES = [
    "Random streams: the same seed, but each framework samples its own way, so completions, rewards and trained weights "
    "differ from the first step; held-out accuracy after a few steps mostly reflects that noise (see its SE).",
    "Stop: TRL's generate path takes no stop strings, so the stop string is an extra EOS id (checked to be one token); "
    "thinkrl's decoded-text check would also stop on the same text spelt in several tokens (stops_not_on_tag_token).",
    "Generation: thinkrl drops finished rows from the batch and its KV cache; transformers' generate keeps every row "
    "until all have stopped or the length limit.",
    "Update: thinkrl runs each distinct prompt once per group and leaves zero-advantage samples out of the backward "
    "pass (the same gradient); TRL runs all full sequences and also computes the entropy.",
    "Wall time: thinkrl's loop is GRPOTrainer.run()'s (metrics line, progress and stop checks after each step); TRL's "
    "is trainer.train()'s (data loader, logging, callbacks). The end of the run (thinkrl: final checkpoint, summary, "
    "report.html; TRL with save_strategy='no': little) is counted only in the '+ end' ratio. Peak RSS includes imports.",
]


def run_side(kind: str, task_file: Path, argv: list[str], out_json: Path, threads: int, sample_ms: float) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               PYTHONWARNINGS="ignore")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, SIDES, kind, "--task", str(task_file), "--json", str(out_json), "--threads", str(threads),
           *argv]
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeSampler(proc.pid, sample_ms / 1000).start()
    output, _ = proc.communicate()
    tree = sampler.stop()
    if proc.returncode != 0:
        sys.stderr.write(output[-6000:])
        raise SystemExit(f"the {kind} side failed (exit {proc.returncode}): {' '.join(cmd)}")
    out = json.loads(out_json.read_text())
    out.update(tree, process_seconds=time.perf_counter() - t,
               load_average_1min=[round(load_before, 2), round(os.getloadavg()[0], 2)])  # others' load: before, after
    return out


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "per_round": values}


def heldout_summary(h: dict) -> dict:
    n = h["questions"]
    a, b = h["thinkrl"]["accuracy"], h["trl"]["accuracy"]
    se = math.sqrt(a * (1 - a) / n + b * (1 - b) / n)  # of the difference of two independent accuracies
    return {"questions": n, "base": h["base"]["accuracy"], "thinkrl": a, "trl": b, "difference": a - b,
            "se_difference": se, "within_2se": abs(a - b) <= 2 * se, "judged": "the models of round 1"}


def aggregate(rounds: list[dict], threads: int, heldout: dict | None) -> dict:
    t, q = [r["thinkrl"] for r in rounds], [r["trl"] for r in rounds]
    mx = lambda side, k: max(s[k] for s in side)  # noqa: E731
    out = {
        "rounds": len(rounds),
        "wall_seconds_per_step": {"thinkrl": spread([s["wall_seconds_per_step"] for s in t]),
                                  "trl": spread([s["wall_seconds_per_step"] for s in q])},
        "median_step_seconds": {"thinkrl": spread([s["seconds_per_step"] for s in t]),
                                "trl": spread([s["seconds_per_step"] for s in q])},
        "ratio_wall": spread([b["wall_seconds_per_step"] / a["wall_seconds_per_step"] for a, b in zip(t, q)]),
        "ratio_median_step": spread([b["seconds_per_step"] / a["seconds_per_step"] for a, b in zip(t, q)]),
        "ratio_wall_with_end": spread([b["wall_seconds_per_step_with_end"] / a["wall_seconds_per_step_with_end"]
                                       for a, b in zip(t, q)]),
        "end_of_run_seconds": {"thinkrl": spread([s["end_of_run_seconds"] for s in t]),
                               "trl": spread([s["end_of_run_seconds"] for s in q])},
        "tree_peak_rss_mb": {"thinkrl": mx(t, "tree_peak_rss_mb"), "trl": mx(q, "tree_peak_rss_mb")},
        "main_peak_rss_mb": {"thinkrl": mx(t, "main_peak_rss_mb"), "trl": mx(q, "main_peak_rss_mb")},
        "tree_most_processes": {"thinkrl": mx(t, "tree_most_processes"), "trl": mx(q, "tree_most_processes")},
        "same_weights_every_round": {"thinkrl": len({s["weights_sha256_16"] for s in t}) == 1,
                                     "trl": len({s["weights_sha256_16"] for s in q}) == 1},
        "heldout": heldout_summary(heldout) if heldout else None,
    }
    out["ratio_tree_rss"] = out["tree_peak_rss_mb"]["thinkrl"] / out["tree_peak_rss_mb"]["trl"]
    target = TARGETS.get(threads)
    out["targets"] = {"steps_per_s_ratio_at_least": target,
                      "speed_met": out["ratio_wall"]["median"] >= target if target else None,
                      "tree_rss_met": out["ratio_tree_rss"] <= 1.0,
                      "heldout_met": out["heldout"]["within_2se"] if heldout else None}
    return out


def table(results: dict) -> str:
    head = (f"{'task':9s} {'thr':>3s} {'wall s/step':>15s} {'steps/s ratio (wall)':>24s} {'+ end':>6s} {'median step':>11s} "
            f"{'tree peak RSS MB':>20s} {'held-out accuracy':>27s}")
    sub = (f"{'':9s} {'':>3s} {'thinkrl':>7s} {'TRL':>7s} {'median [min, max]':>24s} {'ratio':>6s} {'ratio':>11s} "
           f"{'thinkrl':>7s} {'TRL':>6s} {'ratio':>5s} {'thinkrl':>7s} {'TRL':>6s} {'diff ± 2SE':>12s}")
    lines = [head, sub]
    for key, a in results.items():
        task, thr = key.rsplit("/", 1)
        w, rw, rm, rss, h = a["wall_seconds_per_step"], a["ratio_wall"], a["ratio_median_step"], a["tree_peak_rss_mb"], a["heldout"]
        held = (f"{100 * h['thinkrl']:6.1f}% {100 * h['trl']:5.1f}% {100 * h['difference']:+5.1f}±{200 * h['se_difference']:4.1f}"
                if h else f"{'-':>7s} {'-':>6s} {'-':>12s}")
        lines.append(f"{task:9s} {thr:>3s} {w['thinkrl']['median']:7.3f} {w['trl']['median']:7.3f} "
                     f"{rw['median']:8.2f} [{rw['min']:5.2f}, {rw['max']:5.2f}] {a['ratio_wall_with_end']['median']:6.2f} "
                     f"{rm['median']:11.2f} "
                     f"{rss['thinkrl']:7.0f} {rss['trl']:6.0f} {a['ratio_tree_rss']:5.2f} {held}")
    return "\n".join(lines)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs both sides, alternating which goes first")
    ap.add_argument("--threads", help="thread counts, each run in every round (0 = torch's default); default 1,2, "
                                      "with --quick 1")
    ap.add_argument("--tasks", default="embedded,second", help="embedded, second (bench/second_task.py), or both")
    ap.add_argument("--steps", type=int, default=20, help="measured steps (after --warmup ones)")
    ap.add_argument("--warmup", type=int, default=2, help="steps trained but left out of the measurement")
    ap.add_argument("--eval-size", type=int, default=200, help="held-out questions (0 = all)")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-ms", type=float, default=25.0, help="interval of the process-tree memory sampling")
    ap.add_argument("--second-cache", help="bench/second_task.py's cache directory (its default if not given)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 round, 1 warm-up + 3 steps, 40 questions, 1 thread unless --threads is given")
    ap.add_argument("--out", help="also write the JSON here, with every round's and every step's numbers")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.steps, args.warmup, args.eval_size = 1, 3, 1, 40
    args.threads = args.threads or ("1" if args.quick else "1,2")
    args.threads = [int(x) for x in str(args.threads).split(",") if x.strip()]
    args.tasks = [x.strip() for x in args.tasks.split(",") if x.strip()]
    bad = [x for x in args.tasks if x not in ("embedded", "second")]
    if bad or not args.tasks:
        raise SystemExit(f"--tasks: unknown {bad}; give embedded, second or embedded,second")
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0 or any(n < 0 for n in args.threads) or not args.threads:
        raise SystemExit("--rounds and --steps must be >= 1, --warmup >= 0, --threads a list of counts >= 0")
    return args


def check_stops(task: sides.Task) -> None:
    from thinkrl.policy import load_tokenizer

    sides.stop_token_ids(load_tokenizer(task.model), task.stop)  # fails loudly when a stop is not one token


def main() -> int:
    args = parse_args()
    try:
        import trl
    except ImportError:
        raise SystemExit("TRL is not installed: pip install trl (or pip install .[bench])") from None
    import torch
    import transformers

    t_all = time.perf_counter()
    tasks = [sides.embedded_task() if n == "embedded" else sides.second_task(args.second_cache)
             for n in args.tasks]
    for task in tasks:
        check_stops(task)
    conds = [(task, n) for task in tasks for n in args.threads]
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed)]
    per_round: dict[str, list[dict]] = {f"{task.name}/{n}": [] for task, n in conds}
    heldout: dict[str, dict] = {}
    runs, done = 2 * args.rounds * len(conds), 0
    with tempfile.TemporaryDirectory(prefix="vs_trl_") as tmp:
        tmp = Path(tmp)
        for task in tasks:
            (tmp / f"{task.name}.json").write_text(json.dumps(asdict(task)))
        for r in range(args.rounds):
            for task, n in conds:
                key, rec = f"{task.name}/{n}", {"round": r + 1}
                order = ("thinkrl", "trl") if r % 2 == 0 else ("trl", "thinkrl")
                for side in order:
                    done += 1
                    elapsed = time.perf_counter() - t_all
                    print(f"[{done}/{runs}, {elapsed:.0f} s] round {r + 1}, {task.name}, {n} thread(s): {side}, "
                          f"{args.warmup} + {args.steps} steps ...", file=sys.stderr, flush=True)
                    model_out = tmp / f"{task.name}_{n}_{side}_r{r + 1}"
                    extra = ["--model-out", str(model_out)] + (["--tmp", str(tmp / "trl_out")] if side == "trl" else [])
                    rec[side] = run_side(side, tmp / f"{task.name}.json", common + extra, tmp / f"{side}.json", n,
                                         args.sample_ms)
                rec["first"] = order[0]
                per_round[key].append(rec)
        if not args.no_eval:
            for task, n in conds:
                print(f"held-out evaluation, {task.name}, {n} thread(s): base, thinkrl and TRL of round 1 "
                      f"({args.eval_size or 'all'} questions) ...", file=sys.stderr, flush=True)
                models = [f"{s}={tmp / f'{task.name}_{n}_{s}_r1'}" for s in ("thinkrl", "trl")]
                heldout[f"{task.name}/{n}"] = run_side(
                    "eval", tmp / f"{task.name}.json", ["--seed", str(args.seed), "--eval-size", str(args.eval_size),
                                                        "--models", *models], tmp / "eval.json", n, args.sample_ms)

    results = {key: aggregate(rs, int(key.rsplit("/", 1)[1]), heldout.get(key)) for key, rs in per_round.items()}
    strip = lambda s: {k: v for k, v in s.items() if k != "per_step"}  # noqa: E731
    result = {
        "results": results,
        "rounds": {key: [{**r, "thinkrl": strip(r["thinkrl"]), "trl": strip(r["trl"])} for r in rs]
                   for key, rs in per_round.items()},
        "heldout": heldout,
        "tasks": {task.name: asdict(task) for task in tasks},
        "settings": {
            "rounds": args.rounds, "threads": args.threads, "steps_measured": args.steps,
            "warmup_steps_excluded": args.warmup, "seed": args.seed, "group_size": sides.G,
            "prompts_per_step": sides.PROMPTS_PER_STEP, "lr": sides.LR, "betas": sides.BETAS,
            "weight_decay": sides.WEIGHT_DECAY, "warmup_lr_steps": sides.WARMUP_STEPS,
            "max_grad_norm": sides.MAX_GRAD_NORM, "beta": 0.0, "mu": 1, "epsilon": sides.EPSILON, "loss": "grpo",
            "temperature": sides.TEMPERATURE, "rewards": list(sides.REWARDS), "dtype": "float32", "device": "cpu",
            "eval_questions": args.eval_size, "memory_sample_ms": args.sample_ms,
            "mapping": [{"knob": k, "thinkrl": a, "trl": b} for k, a, b in MAPPING], "differences": DIFFERENCES,
        },
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "trl": trl.__version__, "transformers": transformers.__version__,
                    "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M")},
        "bench_seconds": time.perf_counter() - t_all,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(result, rounds=per_round), indent=1))
    print("\nknob mapping (thinkrl | TRL):")
    for k, a, b in MAPPING:
        print(f"  {k:18s} {a}  |  {b}")
    print("\ndifferences that remain:")
    for d in DIFFERENCES:
        print(f"  - {d}")
    print(f"\nratios are thinkrl steps/s over TRL steps/s; wall = the training loop's wall time per measured step "
          f"(median of {args.rounds} rounds); tree RSS = the largest summed RSS of a side's process tree\n")
    print(table(results))
    print(f"\nBench took {result['bench_seconds']:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
