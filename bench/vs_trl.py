"""thinkrl against TRL's GRPOTrainer on the same work, on this machine, as JSON and a table.

    .venv/bin/python bench/vs_trl.py [--steps 20] [--warmup 2] [--eval-size 200] [--seed 0] [--out results.json]

Needs TRL (`pip install .[bench]`, or `pip install trl`). Both frameworks train the embedded
tiny model (a 1M-parameter Qwen2) with GRPO on the embedded task's train rows in the R1-Zero
template, with thinkrl's `accuracy` and `format` rewards, the same questions in the same order,
the same group size, batch, completion length, optimiser, schedule and seed (the mapping of
every knob is printed). Each framework runs in a subprocess of its own, so that the peak RSS
(`ru_maxrss`) is that framework's; a third subprocess then judges the base model and both
trained models identically with thinkrl's held-out evaluation (T 0.6, top-p 0.95, one
sample per question, the same sampling seed for every model).

Measured per step, medians over the steps after the warm-up ones:
- seconds per step: thinkrl `GRPOTrainer.train_step()` wall time (as bench/step_speed.py);
  TRL, a `TrainerCallback` from `on_step_begin` to `on_step_end` (generation, rewards,
  forward/backward, optimiser step; not its logging);
- rollout tokens/s: completion tokens of the step / generation seconds (thinkrl: its
  engine's `generate`; TRL: its `_generate`, timed by wrapping the instance method);
- training tokens/s: completion tokens of the step / update seconds, where update is
  thinkrl's `timing/update` (+ `timing/logprobs`, 0 at μ = 1) and, for TRL, the step time
  less its generation and reward time (the forward/backward, the optimiser step and the
  tensor building around them). thinkrl leaves samples with zero advantage out of the
  backward pass (the gradient is unchanged); their tokens are still counted, for both;
- peak RSS of the subprocess (the RSS before the first step is given too, so the imports'
  share is visible).

Absolute numbers mean something only beside the machine they came from, which is printed.
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

# knobs shared by both frameworks (thinkrl's defaults for `thinkrl zero`)
G = 8
PROMPTS_PER_STEP = 8
MAX_NEW_TOKENS = 80
LR = 2e-5
BETAS = (0.9, 0.99)
WEIGHT_DECAY = 0.0
WARMUP_STEPS = 5
MAX_GRAD_NORM = 1.0
TEMPERATURE = 1.0
EPSILON = 0.2
STOP = "</answer>"
REWARDS = ("accuracy", "format")


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def thinkrl_overrides(total_steps: int, seed: int, threads: int = 0) -> list[str]:
    return [f"run.threads={threads}", "run.progress=false", "data.eval=none", "train.save_every=0",
            f"train.steps={total_steps}", f"run.seed={seed}", "model.dtype=float32", "model.device=cpu",
            f"rollout.group_size={G}", f"train.prompts_per_step={PROMPTS_PER_STEP}",
            f"rollout.max_new_tokens={MAX_NEW_TOKENS}", f"rollout.temperature={TEMPERATURE}",
            "rollout.top_p=1.0", "rollout.top_k=0", f"rollout.stop=['{STOP}']",
            f"optim.lr={LR}", f"optim.betas=[{BETAS[0]}, {BETAS[1]}]", f"optim.weight_decay={WEIGHT_DECAY}",
            f"optim.warmup_steps={WARMUP_STEPS}", "optim.schedule=constant", f"optim.max_grad_norm={MAX_GRAD_NORM}",
            "objective.beta=0.0", "objective.mu=1", f"objective.eps_low={EPSILON}", "objective.loss_agg=grpo",
            f"train.micro_batch_size={G * PROMPTS_PER_STEP}",
            "rewards.weights={accuracy: 1.0, format: 1.0}"]


# (knob, thinkrl setting, TRL setting)
MAPPING = [
    ("model", "model.path=embedded (thinkrl.task.TINY_DIR)", "AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=float32) passed as model"),
    ("tokenizer", "the tiny tokenizer, left padding", "processing_class = the same tokenizer, padding_side='left'"),
    ("prompts", "embedded train rows, render(question, 'r1_zero')", "dataset column 'prompt' = the same rendered text (plain text, no chat template)"),
    ("question order", "PromptSampler(seed)", "the same PromptSampler order written into the dataset, shuffle_dataset=False"),
    ("rewards", "rewards.weights={accuracy: 1, format: 1}", "reward_funcs=[accuracy, format] (thinkrl.rewards.get_reward wrapped), reward_weights=[1, 1]"),
    ("group size G", f"rollout.group_size={G}", f"num_generations={G}"),
    ("prompts per step", f"train.prompts_per_step={PROMPTS_PER_STEP}", f"per_device_train_batch_size={G * PROMPTS_PER_STEP} (completions), gradient_accumulation_steps=1, steps_per_generation=1"),
    ("micro-batch", f"train.micro_batch_size={G * PROMPTS_PER_STEP} (one forward/backward)", f"the whole batch of {G * PROMPTS_PER_STEP} in one forward/backward"),
    ("completion length", f"rollout.max_new_tokens={MAX_NEW_TOKENS}", f"max_completion_length={MAX_NEW_TOKENS}"),
    ("stop", f"rollout.stop=['{STOP}'] (decoded-text check)", f"model.generation_config.eos_token_id=[<|endoftext|>, '{STOP}' token id] (the tag is one token)"),
    ("sampling", f"temperature={TEMPERATURE}, top_p=1, top_k=0", f"temperature={TEMPERATURE}, top_p=1.0, top_k=0"),
    ("learning rate", f"optim.lr={LR}", f"learning_rate={LR} (and the optimizer passed in)"),
    ("optimiser", f"AdamW betas={BETAS}, weight_decay={WEIGHT_DECAY}, eps=1e-8", f"optimizers=(torch.optim.AdamW(lr={LR}, betas={BETAS}, weight_decay={WEIGHT_DECAY}, eps=1e-8), ...); adam_beta1/2 set alike"),
    ("schedule", f"optim.warmup_steps={WARMUP_STEPS}, schedule=constant: lr×(i+1)/{WARMUP_STEPS}, then lr", f"optimizers=(..., LambdaLR(thinkrl.train.grpo.lr_lambda)): the same factors (HF 'constant_with_warmup' would give i/{WARMUP_STEPS}, lr 0 at step 1)"),
    ("grad clipping", f"optim.max_grad_norm={MAX_GRAD_NORM}", f"max_grad_norm={MAX_GRAD_NORM}"),
    ("KL β", "objective.beta=0 (no reference model)", "beta=0.0 (no reference model)"),
    ("μ", "objective.mu=1", "num_iterations=1"),
    ("clip ε", f"objective.eps_low={EPSILON}", f"epsilon={EPSILON}"),
    ("loss aggregation", "objective.loss_agg=grpo (per-sequence mean, then mean)", "loss_type='grpo'"),
    ("advantages", "(r - mean) / std per group (std N-1)", "scale_rewards='group': (r - mean) / (std + 1e-4), std N-1"),
    ("precision", "model.dtype=float32, device cpu", "bf16=False, fp16=False, use_cpu=True"),
    ("gradient checkpointing", "none", "gradient_checkpointing=False"),
    ("seed", "run.seed", "seed (TrainingArguments)"),
    ("threads", "run.threads=--threads (0: torch default)", "torch.set_num_threads(--threads) (0: torch default)"),
]

DIFFERENCES = [
    "Random streams: the same seed, but each framework draws its samples its own way (thinkrl: inverse-CDF on a seeded CPU "
    "generator; TRL: transformers' generate with torch's global RNG), so the completions, rewards and trained weights differ "
    "from the first step; held-out accuracy after a few steps mostly reflects that noise (see eval_se).",
    f"Stop: TRL's transformers generate path cannot take stop strings (transformers needs the tokenizer passed to generate(), "
    f"which TRL does not do), so '{STOP}' is made an extra EOS id. It is one token in this vocabulary, but the text could also "
    f"be spelt '</' 'answer' '>': thinkrl's decoded-text check stops there too, TRL would not (stops_not_on_tag_token counts "
    f"how often that happened in thinkrl's rollouts).",
    "Generation: thinkrl drops finished rows from the batch and its KV cache; transformers' generate keeps every row until all "
    "have stopped or max_new_tokens. Both are each framework's own way.",
    "Update: thinkrl runs each distinct prompt once for its group (shared KV cache) and leaves zero-advantage samples out of "
    "the backward pass (the same gradient); TRL runs all 64 full sequences and also computes the entropy.",
    "Peak RSS includes each framework's imports (TRL brings accelerate, datasets, pandas, pyarrow).",
]


# ------------------------------------------------------------------------------------------ workers


def _sampled_order(n_rows: int, seed: int, total_steps: int) -> list[int]:
    from thinkrl.data import PromptSampler

    sampler = PromptSampler(n_rows, seed)
    return [i for _ in range(total_steps) for i in sampler.next(PROMPTS_PER_STEP)]


def _train_rows(tokenizer, max_prompt_tokens: int = 256) -> list[dict]:
    """The embedded train rows that thinkrl's trainer keeps (prompt within data.max_prompt_tokens)."""
    from thinkrl.data import load_dataset
    from thinkrl.template import render

    rows = load_dataset("embedded", "train")
    return [r for r in rows if len(tokenizer(render(r["question"]), add_special_tokens=False)["input_ids"]) <= max_prompt_tokens]


def _summary(rows: list[dict], warmup: int) -> dict:
    measured = rows[warmup:]
    med = lambda k: statistics.median(r[k] for r in measured)  # noqa: E731
    sec = med("step_seconds")
    return {
        "steps_measured": len(measured),
        "seconds_per_step": sec,
        "steps_per_s": 1 / sec,
        "generate_seconds": med("generate_seconds"),
        "reward_seconds": med("reward_seconds"),
        "update_seconds": med("update_seconds"),
        "rollout_tokens_per_s": statistics.median(r["completion_tokens"] / r["generate_seconds"] for r in measured),
        "train_tokens_per_s": statistics.median(r["completion_tokens"] / r["update_seconds"] for r in measured),
        "step_tokens_per_s": statistics.median(r["completion_tokens"] / r["step_seconds"] for r in measured),
        "mean_completion_tokens": statistics.mean(r["completion_tokens"] for r in measured) / (G * PROMPTS_PER_STEP),
        "train_reward_first_steps": statistics.mean(r["reward"] for r in rows[:warmup + 3]),
        "train_reward_last_5_steps": statistics.mean(r["reward"] for r in rows[-5:]),
        "total_train_seconds": sum(r["step_seconds"] for r in rows),
    }


def worker_thinkrl(args) -> dict:
    import torch

    from thinkrl.config import load_config
    from thinkrl.train.grpo import GRPOTrainer

    total = args.steps + args.warmup
    cfg = load_config(None, thinkrl_overrides(total, args.seed, args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = GRPOTrainer(cfg, tmp)
        tag_id = trainer.tokenizer.convert_tokens_to_ids(STOP)
        counts = {"stops": 0, "stops_not_on_tag_token": 0}
        generate = trainer.engine.generate

        def counted(*a, **k):  # instrumentation only: what stopped a completion
            out = generate(*a, **k)
            for ids, why in zip(out.completion_ids, out.finish_reasons):
                if why == "stop" and ids and ids[-1] not in trainer.engine.eos_ids:
                    counts["stops"] += 1
                    counts["stops_not_on_tag_token"] += int(ids[-1] != tag_id)
            return out

        trainer.engine.generate = counted
        rss_before = rss_now_mb()
        t_start = time.perf_counter()
        rows = []
        for _ in range(total):
            t = time.perf_counter()
            m = trainer.train_step()
            wall = time.perf_counter() - t
            rows.append({"step_seconds": wall, "generate_seconds": m["timing/generate"],
                         "reward_seconds": m["timing/reward"],
                         "update_seconds": m["timing/update"] + m["timing/logprobs"],
                         "completion_tokens": m["completion_len"] * cfg.completions_per_step,
                         "reward": m["reward"]})
        wall_total = time.perf_counter() - t_start
        peak = peak_rss_mb()
        trainer.policy.save_pretrained(args.model_out, safe_serialization=True)
        trainer.tokenizer.save_pretrained(args.model_out)
    out = _summary(rows, args.warmup)
    out.update({"wall_seconds_all_steps": wall_total, "peak_rss_mb": peak, "rss_before_train_mb": rss_before,
                "update_measured_as": "timing/update + timing/logprobs (forward/backward + optimiser step)",
                "threads": torch.get_num_threads(), **counts, "per_step": rows})
    return out


def worker_trl(args) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from thinkrl.config import load_config
    from thinkrl.rewards import get_reward
    from thinkrl.task import TINY_DIR
    from thinkrl.template import render
    from thinkrl.train.grpo import lr_lambda

    total = args.steps + args.warmup
    cfg = load_config(None, thinkrl_overrides(total, args.seed))  # only for lr_lambda: the same schedule
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32)
    eos_before = model.generation_config.eos_token_id
    tag_id = tokenizer.convert_tokens_to_ids(STOP)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tag_id]  # stop at </answer>

    rows = _train_rows(tokenizer)
    order = _sampled_order(len(rows), args.seed, total)
    dataset = Dataset.from_list([{"prompt": render(rows[i]["question"]), "question": rows[i]["question"],
                                  "answer": rows[i]["answer"], "level": rows[i]["level"]} for i in order])

    acc_fn, fmt_fn = get_reward("accuracy"), get_reward("format")

    def accuracy(completions, answer, **kwargs):
        return acc_fn(completions, answer=answer)

    def format(completions, **kwargs):  # noqa: A001 - the reward's name in TRL's logs
        return fmt_fn(completions)

    config = GRPOConfig(
        output_dir=args.tmp, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, seed=args.seed,
        max_steps=total, per_device_train_batch_size=G * PROMPTS_PER_STEP, gradient_accumulation_steps=1,
        num_generations=G, max_completion_length=MAX_NEW_TOKENS, temperature=TEMPERATURE, top_p=1.0, top_k=0,
        learning_rate=LR, adam_beta1=BETAS[0], adam_beta2=BETAS[1], weight_decay=WEIGHT_DECAY,
        max_grad_norm=MAX_GRAD_NORM, lr_scheduler_type="constant_with_warmup", warmup_steps=WARMUP_STEPS,
        beta=0.0, num_iterations=1, epsilon=EPSILON, loss_type="grpo", scale_rewards="group",
        reward_weights=[1.0, 1.0], shuffle_dataset=False, remove_unused_columns=False,
        log_completions=False, dataloader_num_workers=0,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))

    cur: dict = {}
    steps: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kw):
            cur.clear()
            cur.update(generate_seconds=0.0, reward_seconds=0.0, completion_tokens=0, t0=time.perf_counter())

        def on_step_end(self, args_, state, control, **kw):
            step = time.perf_counter() - cur.pop("t0")
            steps.append({**cur, "step_seconds": step,
                          "update_seconds": step - cur["generate_seconds"] - cur["reward_seconds"]})

        def on_log(self, args_, state, control, logs=None, **kw):
            if logs and "reward" in logs and steps:
                steps[-1]["reward"] = logs["reward"]

    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy, format], args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepTimer()], optimizers=(optimizer, scheduler))

    generate, rewards = trainer._generate, trainer._calculate_rewards  # timed by wrapping: instrumentation only

    def timed_generate(*a, **k):
        t = time.perf_counter()
        out = generate(*a, **k)
        cur["generate_seconds"] += time.perf_counter() - t
        cur["completion_tokens"] += sum(len(c) for c in out[1])
        return out

    def timed_rewards(*a, **k):
        t = time.perf_counter()
        out = rewards(*a, **k)
        cur["reward_seconds"] += time.perf_counter() - t
        return out

    trainer._generate, trainer._calculate_rewards = timed_generate, timed_rewards
    rss_before = rss_now_mb()
    t_start = time.perf_counter()
    trainer.train()
    wall_total = time.perf_counter() - t_start
    peak = peak_rss_mb()
    assert len(steps) == total, (len(steps), total)
    final = trainer.accelerator.unwrap_model(trainer.model)
    final.generation_config.eos_token_id = eos_before  # judged by thinkrl's engine with its own stop string
    final.save_pretrained(args.model_out, safe_serialization=True)
    tokenizer.save_pretrained(args.model_out)
    out = _summary(steps, args.warmup)
    out.update({"wall_seconds_all_steps": wall_total, "peak_rss_mb": peak, "rss_before_train_mb": rss_before,
                "update_measured_as": "step time - generation time - reward time (forward/backward, optimiser step, "
                                      "tensor building)",
                "threads": torch.get_num_threads(), "trl_version": trl.__version__, "per_step": steps})
    return out


def worker_eval(args) -> dict:
    import torch

    from thinkrl.config import load_config
    from thinkrl.data import load_dataset
    from thinkrl.evaluation.heldout import evaluate
    from thinkrl.policy import load_model, load_tokenizer
    from thinkrl.rollout import make_engine
    from thinkrl.task import TINY_DIR
    from thinkrl.template import render

    cfg = load_config(None, ["model.device=cpu", f"data.eval_size={args.eval_size}"])
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(str(TINY_DIR))
    rows = load_dataset("embedded", "test")[: args.eval_size or None]
    prompts = [tokenizer(render(r["question"]), add_special_tokens=False)["input_ids"] for r in rows]
    out, base = {}, None
    for name, path in (("base", str(TINY_DIR)), *(tuple(x.split("=", 1)) for x in args.models)):
        model = load_model(path, torch.device("cpu"), requires_grad=False)
        engine = make_engine("hf", model, tokenizer, torch.device("cpu"))
        m = evaluate(engine, prompts, rows, cfg, seed=args.seed + 1)
        out[name] = {k.removeprefix("eval/"): v for k, v in m.items()
                     if k in ("eval/accuracy", "eval/format_rate", "eval/completion_len")
                     or k.startswith("eval/accuracy/level_")}
        params = torch.cat([p.flatten() for p in model.state_dict().values()])
        if base is None:
            base = params
        else:  # how far training moved the weights: relative L2 distance from the base model
            out[name]["weight_change"] = float((params - base).norm() / base.norm())
    out["questions"] = len(rows)
    return out


# ------------------------------------------------------------------------------------------ driver


def run_worker(kind: str, argv: list[str], out_json: Path, threads: int = 0) -> tuple[dict, float]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               PYTHONWARNINGS="ignore")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    argv = [*argv, "--threads", str(threads)]
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--_worker", kind, "--_json", str(out_json), *argv], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:])
        raise SystemExit(f"the {kind} worker failed (exit {proc.returncode})")
    out = json.loads(out_json.read_text())
    out["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # before, after: others' load
    return out, wall


def ratio(a, b):
    return a / b if a and b else None


def table(res: dict) -> str:
    t, r = res["thinkrl"], res["trl"]
    acc = res["heldout"]
    lines = [("seconds per step (median)", t["seconds_per_step"], r["seconds_per_step"], "s"),
             ("steps per second", t["steps_per_s"], r["steps_per_s"], ""),
             ("  generation s / step", t["generate_seconds"], r["generate_seconds"], "s"),
             ("  reward s / step", t["reward_seconds"], r["reward_seconds"], "s"),
             ("  update s / step", t["update_seconds"], r["update_seconds"], "s"),
             ("rollout tokens / s", t["rollout_tokens_per_s"], r["rollout_tokens_per_s"], ""),
             ("training tokens / s", t["train_tokens_per_s"], r["train_tokens_per_s"], ""),
             ("completion tokens / s (whole step)", t["step_tokens_per_s"], r["step_tokens_per_s"], ""),
             ("mean completion length", t["mean_completion_tokens"], r["mean_completion_tokens"], "tok"),
             ("peak RSS", t["peak_rss_mb"], r["peak_rss_mb"], "MB"),
             ("RSS before the first step", t["rss_before_train_mb"], r["rss_before_train_mb"], "MB"),
             (f"held-out accuracy ({acc['questions']} q; base {acc['base']['accuracy']:.3f})",
              acc["thinkrl"]["accuracy"], acc["trl"]["accuracy"], ""),
             ("held-out format rate", acc["thinkrl"]["format_rate"], acc["trl"]["format_rate"], ""),
             ("wall seconds, all steps", t["wall_seconds_all_steps"], r["wall_seconds_all_steps"], "s")]
    out = [f"{'':40s} {'thinkrl':>10s} {'TRL':>10s} {'thinkrl/TRL':>12s}"]
    for name, a, b, unit in lines:
        fmt = (lambda v: f"{v:10.3f}") if max(abs(a), abs(b)) < 10 else (lambda v: f"{v:10.0f}")
        rr = ratio(a, b)
        out.append(f"{name:40s} {fmt(a)} {fmt(b)} {('%12.2f' % rr) if rr else '':>12s}  {unit}")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="measured steps (after --warmup ones)")
    ap.add_argument("--warmup", type=int, default=2, help="steps trained but left out of the medians")
    ap.add_argument("--eval-size", type=int, default=200, help="held-out questions (0 = all 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads in every worker (0 = torch's default, all cores). On a machine that other "
                         "work is using, 1 avoids the collapse of spinning OpenMP threads that have no core")
    ap.add_argument("--out", help="also write the JSON here (with every step's numbers)")
    ap.add_argument("--_worker", choices=["thinkrl", "trl", "eval"], help=argparse.SUPPRESS)
    ap.add_argument("--_json", help=argparse.SUPPRESS)
    ap.add_argument("--model-out", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="*", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:
        fn = {"thinkrl": worker_thinkrl, "trl": worker_trl, "eval": worker_eval}[args._worker]
        Path(args._json).write_text(json.dumps(fn(args)))
        return 0

    import torch

    try:
        import trl
    except ImportError:
        raise SystemExit("TRL is not installed: pip install trl (or pip install .[bench])") from None

    load = os.getloadavg()[0]
    if not args.threads and load > 0.5:
        print(f"note: the load average is already {load:.1f} on {os.cpu_count()} cores; with every core in use, "
              "torch's spinning threads can make steps many times slower: consider --threads 1",
              file=sys.stderr, flush=True)
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed)]
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vs_trl_") as tmp:
        tmp = Path(tmp)
        print(f"thinkrl: {args.warmup} + {args.steps} steps ...", file=sys.stderr, flush=True)
        ours, ours_wall = run_worker("thinkrl", common + ["--model-out", str(tmp / "thinkrl")], tmp / "thinkrl.json",
                                     args.threads)
        print(f"TRL {trl.__version__}: {args.warmup} + {args.steps} steps ...", file=sys.stderr, flush=True)
        theirs, theirs_wall = run_worker("trl", common + ["--model-out", str(tmp / "trl"), "--tmp", str(tmp / "trl_out")],
                                         tmp / "trl.json", args.threads)
        print(f"held-out evaluation of base, thinkrl and TRL models ({args.eval_size or 300} questions) ...",
              file=sys.stderr, flush=True)
        heldout, eval_wall = run_worker("eval", ["--seed", str(args.seed), "--eval-size", str(args.eval_size),
                                                 "--models", f"thinkrl={tmp / 'thinkrl'}", f"trl={tmp / 'trl'}"],
                                        tmp / "eval.json", args.threads)
    ours["process_seconds"], theirs["process_seconds"] = ours_wall, theirs_wall
    for name, r in (("thinkrl", ours), ("trl", theirs)):
        r["heldout_accuracy"] = heldout[name]["accuracy"]
        r["heldout"] = heldout[name]
    n = heldout["questions"]
    keys = ["steps_per_s", "rollout_tokens_per_s", "train_tokens_per_s", "step_tokens_per_s", "peak_rss_mb",
            "heldout_accuracy"]
    result = {
        "thinkrl": {k: v for k, v in ours.items() if k != "per_step"},
        "trl": {k: v for k, v in theirs.items() if k != "per_step"},
        "ratios": {k: ratio(ours[k], theirs[k]) for k in keys},
        "heldout": heldout,
        "eval_se": (0.25 / n) ** 0.5 if n else None,  # worst-case standard error of one accuracy
        "settings": {
            "steps_measured": args.steps, "warmup_steps_excluded": args.warmup, "seed": args.seed,
            "group_size": G, "prompts_per_step": PROMPTS_PER_STEP, "completions_per_step": G * PROMPTS_PER_STEP,
            "max_new_tokens": MAX_NEW_TOKENS, "stop": STOP, "lr": LR, "betas": BETAS, "weight_decay": WEIGHT_DECAY,
            "warmup_lr_steps": WARMUP_STEPS, "schedule": "constant after warm-up", "max_grad_norm": MAX_GRAD_NORM,
            "beta": 0.0, "mu": 1, "epsilon": EPSILON, "loss": "grpo", "temperature": TEMPERATURE,
            "rewards": list(REWARDS), "dtype": "float32", "device": "cpu",
            "eval": {"questions": n, "temperature": 0.6, "top_p": 0.95, "samples": 1, "max_new_tokens": 80,
                     "seed": args.seed + 1},
            "mapping": [{"knob": k, "thinkrl": a, "trl": b} for k, a, b in MAPPING],
            "differences": DIFFERENCES,
        },
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": args.threads or torch.get_num_threads(), "torch": torch.__version__, "trl": trl.__version__,
                    "transformers": __import__("transformers").__version__, "python": sys.version.split()[0],
                    "date": time.strftime("%Y-%m-%d")},
        "bench_seconds": time.perf_counter() - t_all,
        "eval_seconds": eval_wall,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        full = dict(result, per_step={"thinkrl": ours["per_step"], "trl": theirs["per_step"]})
        Path(args.out).write_text(json.dumps(full, indent=2))
    print("\nknob mapping (thinkrl | TRL):")
    for k, a, b in MAPPING:
        print(f"  {k:22s} {a}  |  {b}")
    print("\ndifferences that remain:")
    for d in DIFFERENCES:
        print(f"  - {d}")
    print()
    print(table(result))
    print(f"\nhigher is better except seconds and RSS; a held-out accuracy has a standard error of up to "
          f"{100 * result['eval_se']:.1f} points. Bench took {result['bench_seconds']:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
