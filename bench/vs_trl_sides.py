"""The subprocesses of bench/vs_trl.py: one training side (thinkrl or TRL) on one task, or the
held-out judge of the trained models. Run by vs_trl.py as

    python bench/vs_trl_sides.py {thinkrl|trl|eval} --task TASK.json --json OUT.json [...]

Each side trains `--warmup` + `--steps` steps and reports, besides every step's numbers:
- wall_seconds_per_step: the wall time of the training loop over the measured steps, divided
  by `--steps`: from the start of the first measured step to the end of the loop's last
  iteration, everything between included. thinkrl: the loop of `GRPOTrainer.run()`, the one a
  `thinkrl zero` user runs (each step, its metrics line, progress and stop checks), from the
  start of `train_step()` to the start of the checkpoint the loop writes after its last step.
  TRL: `trainer.train()`'s loop, from `on_step_begin` to `on_train_end` (the data loader, each
  step, logging, callbacks);
- wall_seconds_per_step_with_end: the same, to the return of `run()` / `train()`: the end of
  the run counted too (thinkrl: the final checkpoint, summary.json and report.html; TRL,
  save_strategy="no": on_train_end and its metrics);
- seconds_per_step: the median step alone (thinkrl: `train_step()`; TRL: `on_step_begin` to
  `on_step_end`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# knobs shared by both frameworks (thinkrl's defaults for `thinkrl zero`); a task sets the length and the stop
G = 8
PROMPTS_PER_STEP = 8
LR = 2e-5
BETAS = (0.9, 0.99)
WEIGHT_DECAY = 0.0
WARMUP_STEPS = 5
MAX_GRAD_NORM = 1.0
TEMPERATURE = 1.0
EPSILON = 0.2
MAX_PROMPT_TOKENS = 256
REWARDS = ("accuracy", "format")


@dataclass
class Task:
    """One benchmark task: what thinkrl's model.path, data.train/eval, model.template,
    rollout.max_new_tokens and rollout.stop are set to (bench/second_task.py's SecondTask, named)."""

    name: str
    model: str  # model and tokenizer directory
    train: str  # train.jsonl ({"question", "answer"})
    test: str  # test.jsonl
    template: str  # "r1_zero" or a format string with {prompt} (thinkrl.template.render)
    max_new_tokens: int
    stop: list[str]

    @classmethod
    def load(cls, path: str) -> Task:
        return cls(**json.loads(Path(path).read_text()))


def embedded_task() -> Task:
    from thinkrl.task import TINY_DIR

    return Task("embedded", str(TINY_DIR), str(TINY_DIR / "train.jsonl"), str(TINY_DIR / "test.jsonl"),
                "r1_zero", 80, ["</answer>"])


def second_task(cache: str | None = None, seed: int = 0) -> Task:
    """bench/second_task.py's task, built (once, cached) from its seed 0 whatever the bench's --seed: the
    task stays the same, --seed changes the training runs."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import second_task as st
    except ImportError as e:
        raise SystemExit(f"--tasks second needs bench/second_task.py ({e}); use --tasks embedded") from None
    t = st.ensure(cache=cache, seed=seed, threads=1)
    return Task("second", str(t.model), str(t.train), str(t.test), t.template, int(t.max_new_tokens), list(t.stop))


def stop_token_ids(tokenizer, stop: list[str]) -> list[int]:
    """The token id of each stop string, which TRL gets as extra EOS ids: each must be exactly one
    token of this tokenizer, or TRL would not stop where thinkrl does."""
    ids = []
    for s in stop:
        enc = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(enc) != 1 or tokenizer.decode(enc) != s:
            raise SystemExit(f"stop string {s!r} is {len(enc)} tokens {enc} in this tokenizer, not one: TRL could "
                             "only stop on it as an EOS id; give the task a stop string that is a single token")
        ids.append(enc[0])
    return ids


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def thinkrl_config(task: Task, total_steps: int, seed: int, threads: int = 0):
    from thinkrl.config import load_config, validate

    cfg = load_config(None, [
        f"run.threads={threads}", "run.progress=false", "data.eval=none", "train.save_every=0",
        f"train.steps={total_steps}", f"run.seed={seed}", "model.dtype=float32", "model.device=cpu",
        f"rollout.group_size={G}", f"train.prompts_per_step={PROMPTS_PER_STEP}", f"rollout.temperature={TEMPERATURE}",
        "rollout.top_p=1.0", "rollout.top_k=0", f"optim.lr={LR}", f"optim.betas=[{BETAS[0]}, {BETAS[1]}]",
        f"optim.weight_decay={WEIGHT_DECAY}", f"optim.warmup_steps={WARMUP_STEPS}", "optim.schedule=constant",
        f"optim.max_grad_norm={MAX_GRAD_NORM}", "objective.beta=0.0", "objective.mu=1", f"objective.eps_low={EPSILON}",
        "objective.loss_agg=grpo", f"train.micro_batch_size={G * PROMPTS_PER_STEP}",
        f"data.max_prompt_tokens={MAX_PROMPT_TOKENS}", "rewards.weights={accuracy: 1.0, format: 1.0}"])
    # set as values, not override strings: a template holds braces and colons
    cfg.model.path, cfg.data.train, cfg.model.template = task.model, task.train, task.template
    cfg.rollout.max_new_tokens, cfg.rollout.stop = task.max_new_tokens, list(task.stop)
    cfg.eval.max_new_tokens = task.max_new_tokens
    validate(cfg)
    return cfg


def train_rows(task: Task, tokenizer) -> list[dict]:
    """The train rows thinkrl's trainer keeps (rendered prompt within data.max_prompt_tokens)."""
    from thinkrl.data import load_jsonl
    from thinkrl.template import render

    return [r for r in load_jsonl(task.train) if len(tokenizer(render(r["question"], task.template, tokenizer),
                                                              add_special_tokens=False)["input_ids"]) <= MAX_PROMPT_TOKENS]


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def summary(rows: list[dict], warmup: int, begin: float, loop_end: float, end: float) -> dict:
    measured = rows[warmup:]
    med = lambda k: statistics.median(r[k] for r in measured)  # noqa: E731
    sec = med("step_seconds")
    wall = (loop_end - begin) / len(measured)
    return {
        "steps_measured": len(measured),
        "wall_seconds_per_step": wall,
        "wall_steps_per_s": 1 / wall,
        "wall_seconds_per_step_with_end": (end - begin) / len(measured),
        "end_of_run_seconds": end - loop_end,
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
    }


def run_measured(run) -> dict:
    """run(), timed, with the RSS before it and the peak after it: what both sides report."""
    rss_before, t_start = rss_now_mb(), time.perf_counter()
    run()
    t_end = time.perf_counter()
    return {"t_end": t_end, "run_seconds_all_steps": t_end - t_start, "main_peak_rss_mb": peak_rss_mb(),
            "rss_before_train_mb": rss_before}


def trained_result(model, tokenizer, model_out: str, rows: list[dict], warmup: int, begin: float, loop_end: float,
                   run: dict, **extra) -> dict:
    """Save the trained model for the held-out judge; the side's summary with its run's numbers."""
    import torch

    model.save_pretrained(model_out, safe_serialization=True)
    tokenizer.save_pretrained(model_out)
    out = summary(rows, warmup, begin, loop_end, run["t_end"])
    out.update({k: v for k, v in run.items() if k != "t_end"}, weights_sha256_16=weights_digest(model),
               threads=torch.get_num_threads(), **extra)
    return out


def worker_thinkrl(args, task: Task) -> dict:
    from thinkrl.train.grpo import GRPOTrainer

    total = args.steps + args.warmup
    cfg = thinkrl_config(task, total, args.seed, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = GRPOTrainer(cfg, tmp)
        stop_ids = set(stop_token_ids(trainer.tokenizer, task.stop))
        counts = {"stops": 0, "stops_not_on_tag_token": 0}
        generate = trainer.engine.generate

        def counted(*a, **k):  # instrumentation only: what stopped a completion
            out = generate(*a, **k)
            for ids, why in zip(out.completion_ids, out.finish_reasons):
                if why == "stop" and ids and ids[-1] not in getattr(trainer.engine, "eos_ids", ()):
                    counts["stops"] += 1
                    counts["stops_not_on_tag_token"] += int(ids[-1] not in stop_ids)
            return out

        trainer.engine.generate = counted
        rows, marks, step = [], [], trainer.train_step
        ckpt, ckpt_at = trainer.checkpoint, []

        def timed_step():  # the step as run() calls it; its start marks the measured loop
            t = time.perf_counter()
            marks.append(t)
            m = step()
            rows.append({"step_seconds": time.perf_counter() - t, "generate_seconds": m["timing/generate"],
                         "reward_seconds": m["timing/reward"],
                         "update_seconds": m["timing/update"] + m["timing/logprobs"],
                         "completion_tokens": m["completion_len"] * cfg.completions_per_step, "reward": m["reward"]})
            return m

        def marked_checkpoint(*a, **k):  # after the last step: the loop's end
            ckpt_at.append(time.perf_counter())
            return ckpt(*a, **k)

        trainer.train_step, trainer.checkpoint = timed_step, marked_checkpoint
        run = run_measured(trainer.run)
        assert len(rows) == total, (len(rows), total)
        loop_end = ckpt_at[-1] if ckpt_at and ckpt_at[-1] > marks[-1] else run["t_end"]
        return trained_result(trainer.policy, trainer.tokenizer, args.model_out, rows, args.warmup, marks[args.warmup],
                              loop_end, run, **counts, per_step=rows,
                              update_measured_as="timing/update + timing/logprobs (forward/backward + optimiser step)")


def worker_trl(args, task: Task) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from thinkrl.data import PromptSampler
    from thinkrl.policy import load_tokenizer
    from thinkrl.rewards import get_reward
    from thinkrl.template import render
    from thinkrl.train.grpo import lr_lambda

    total = args.steps + args.warmup
    cfg = thinkrl_config(task, total, args.seed)  # only for lr_lambda: the same schedule
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(task.model)  # the tokenizer thinkrl uses: the same token ids, left padding
    model = AutoModelForCausalLM.from_pretrained(task.model, dtype=torch.float32)
    eos_before = model.generation_config.eos_token_id
    eos = [tokenizer.eos_token_id, *stop_token_ids(tokenizer, task.stop)]
    model.generation_config.eos_token_id = eos  # stop at the stop string's token

    rows = train_rows(task, tokenizer)
    sampler = PromptSampler(len(rows), args.seed)
    order = [i for _ in range(total) for i in sampler.next(PROMPTS_PER_STEP)]
    dataset = Dataset.from_list([{"prompt": render(rows[i]["question"], task.template, tokenizer),
                                  "question": rows[i]["question"], "answer": rows[i]["answer"]} for i in order])
    acc_fn, fmt_fn = get_reward("accuracy"), get_reward("format")

    def accuracy(completions, answer, **kwargs):
        return acc_fn(completions, answer=answer)

    def format(completions, **kwargs):  # noqa: A001 - the reward's name in TRL's logs
        return fmt_fn(completions)

    config = GRPOConfig(
        output_dir=args.tmp, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, seed=args.seed,
        max_steps=total, per_device_train_batch_size=G * PROMPTS_PER_STEP, gradient_accumulation_steps=1,
        num_generations=G, max_completion_length=task.max_new_tokens, temperature=TEMPERATURE, top_p=1.0, top_k=0,
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
    marks: list[float] = []
    loop_end: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kw):
            t = time.perf_counter()
            marks.append(t)
            cur.clear()
            cur.update(generate_seconds=0.0, reward_seconds=0.0, completion_tokens=0, t0=t)

        def on_step_end(self, args_, state, control, **kw):
            step = time.perf_counter() - cur.pop("t0")
            steps.append({**cur, "step_seconds": step,
                          "update_seconds": step - cur["generate_seconds"] - cur["reward_seconds"]})

        def on_train_end(self, args_, state, control, **kw):
            loop_end.append(time.perf_counter())

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
    run = run_measured(trainer.train)
    assert len(steps) == total, (len(steps), total)
    final = trainer.accelerator.unwrap_model(trainer.model)
    final.generation_config.eos_token_id = eos_before  # judged by thinkrl's engine with its own stop string
    return trained_result(final, tokenizer, args.model_out, steps, args.warmup, marks[args.warmup], loop_end[-1], run,
                          update_measured_as="step time - generation time - reward time (forward/backward, optimiser "
                                             "step, tensor building)", trl_version=trl.__version__, per_step=steps)


def worker_eval(args, task: Task) -> dict:
    """Held-out accuracy of the base model and each trained one, judged alike by thinkrl's evaluate."""
    import torch

    from thinkrl.config import load_config
    from thinkrl.data import load_jsonl
    from thinkrl.evaluation.heldout import evaluate
    from thinkrl.policy import load_model, load_tokenizer
    from thinkrl.rollout import make_engine
    from thinkrl.template import render

    cfg = load_config(None, ["model.device=cpu", f"data.eval_size={args.eval_size}"])
    cfg.eval.max_new_tokens, cfg.rollout.stop = task.max_new_tokens, list(task.stop)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(task.model)
    rows = load_jsonl(task.test)[: args.eval_size or None]
    prompts = [tokenizer(render(r["question"], task.template, tokenizer), add_special_tokens=False)["input_ids"]
               for r in rows]
    out, base = {}, None
    for name, path in (("base", task.model), *(tuple(x.split("=", 1)) for x in args.models)):
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
    out["eval"] = {"temperature": cfg.eval.temperature, "top_p": cfg.eval.top_p, "samples": cfg.eval.samples,
                   "max_new_tokens": cfg.eval.max_new_tokens, "seed": args.seed + 1}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="one side of bench/vs_trl.py (run by it)")
    ap.add_argument("kind", choices=["thinkrl", "trl", "eval"])
    ap.add_argument("--task", required=True, help="a Task as JSON (a file)")
    ap.add_argument("--json", required=True, help="where the result goes")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--eval-size", type=int, default=200)
    ap.add_argument("--model-out")
    ap.add_argument("--tmp")
    ap.add_argument("--models", nargs="*", default=[])
    args = ap.parse_args()
    task = Task.load(args.task)
    fn = {"thinkrl": worker_thinkrl, "trl": worker_trl, "eval": worker_eval}[args.kind]
    Path(args.json).write_text(json.dumps(fn(args, task)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
