"""LoRA (model.lora) against full fine-tuning, as JSON: memory, and learning on the embedded task.

    .venv/bin/python bench/lora.py memory [--threads 1]
    .venv/bin/python bench/lora.py probe --steps 20 --lrs 1e-3 2e-3 5e-3 [--r 16] [--alpha 32]
    .venv/bin/python bench/lora.py task --steps 60 --eval-every 30 --lora-lr 2e-3 [--r 16] [--alpha 32]
    .venv/bin/python bench/lora.py speed --steps 11 --lora-lr 2e-3 [--r 16] [--alpha 32]

memory: GRPO with β = 0.04, set up and one step, each variant in a fresh process (peak RSS is
a process's high-water mark): full fine-tuning (policy + a second copy as π_ref, gradients and
AdamW state for every weight) against LoRA r=16 (π_ref = the policy with its adapters off;
gradients and AdamW state for the adapters alone). Reported: the bytes of each part, RSS after
setup, peak RSS after the step, and the activations autograd keeps for one micro-batch's
backward pass (32 completions of 80 tokens). Each variant runs twice: with glibc's default
allocator, whose heap keeps freed blocks (so peak RSS also counts how the step's temporaries
happened to fragment it), and with MALLOC_MMAP_THRESHOLD_=65536 (every large block its own
mapping, given back when freed: peak RSS then follows the memory actually live). On the
embedded model and on a 23M-parameter Qwen2 (hidden 512, 8 layers, the embedded tokenizer),
random weights, in a temporary directory.

probe: a short `thinkrl zero` with LoRA per learning rate; the mean training reward of the
first and last quarter of the steps. task: `thinkrl zero` with LoRA and with full fine-tuning,
the same steps and seed: held-out accuracy at start and end, the median seconds per step.
speed: the two trainers in one process, taking turns step by step (a fair step-time ratio on a
shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
GRPO_SMALL = ["train.prompts_per_step=4", "rollout.group_size=8", "train.micro_batch_size=32", "data.eval=none",
              "train.save_every=0", "run.progress=false", "rollout.max_new_tokens=80", "run.seed=0"]


def rss_mb() -> float:
    """This process's resident memory now (not its peak)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def child(model: str, variant: str, threads: int) -> dict:
    """One GRPO setup and step in this process: its memory, and the bytes of what it holds."""
    import resource

    import torch

    from thinkrl.config import load_config
    from thinkrl.policy import SequenceBatch, completion_logprobs
    from thinkrl.train.grpo import GRPOTrainer

    extra = {"full": ["objective.beta=0.04"], "lora": ["objective.beta=0.04", "model.lora.r=16", "model.lora.alpha=32"]}
    cfg = load_config(None, [f"model.path={model}", f"run.threads={threads}", "train.steps=1", *GRPO_SMALL,
                             *extra[variant]])
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        trainer = GRPOTrainer(cfg, tmp)
        setup = rss_mb()
        t = time.perf_counter()
        m = trainer.train_step()
        step = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        policy, ref = trainer.policy, trainer.ref
        grads = nbytes(p.grad for p in policy.parameters() if p.grad is not None)
        # activations kept for the backward pass of one micro-batch (32 completions of 80 tokens, 4 prompts)
        g = torch.Generator().manual_seed(0)
        prompts = [p for p in trainer.train_prompts[:4] for _ in range(8)]
        completions = torch.randint(0, len(trainer.tokenizer), (32, 80), generator=g).tolist()
        batch = SequenceBatch.build(prompts, completions, trainer.pad_id, trainer.device, [i // 8 for i in range(32)])
        saved = {}

        def pack(x):
            saved[(x.untyped_storage().data_ptr(), x.dtype)] = x.untyped_storage().nbytes()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            completion_logprobs(policy, batch).sum()
    return {
        "variant": variant,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "trainable_parameters": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "policy_parameter_mb": nbytes(policy.parameters()) / 2 ** 20,
        "reference_parameter_mb": nbytes(ref.parameters() if ref is not None else []) / 2 ** 20,
        "gradient_mb": grads / 2 ** 20,
        "optimizer_state_mb": nbytes(v for s in trainer.optimizer.state.values() for v in s.values()
                                     if torch.is_tensor(v)) / 2 ** 20,
        "saved_activations_per_micro_batch_mb": sum(saved.values()) / 2 ** 20,
        "rss_after_setup_mb": round(setup, 1),
        "peak_rss_mb": round(peak, 1),
        "step_seconds": round(step, 2),
        "kl": m["kl"],
    }


def make_23m(directory: Path) -> str:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from thinkrl.policy import load_tokenizer

    tok = load_tokenizer("embedded")
    config = Qwen2Config(hidden_size=512, num_hidden_layers=8, intermediate_size=1408, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=1024,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


def static(v: dict) -> float:
    """Megabytes of weights (both models), gradients and optimizer state."""
    return sum(v[k] for k in ("policy_parameter_mb", "reference_parameter_mb", "gradient_mb", "optimizer_state_mb"))


def memory(threads: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("embedded", "embedded"), ("qwen2_23m", make_23m(Path(tmp) / "m"))):
            runs = {}
            for variant in ("full", "lora"):
                for allocator, env in (("", {}), ("_mmap_threshold", {"MALLOC_MMAP_THRESHOLD_": "65536"})):
                    r = subprocess.run([PY, __file__, "child", "--model", model, "--variant", variant, "--threads",
                                        str(threads)], capture_output=True, text=True, cwd=ROOT,
                                       env={**os.environ, **env})
                    if r.returncode:
                        raise SystemExit(r.stderr[-3000:])
                    runs[variant + allocator] = json.loads(r.stdout.strip().splitlines()[-1])
            full, lora = runs["full"], runs["lora"]
            out[name] = {
                **runs,
                "second_copy_not_loaded_mb": full["reference_parameter_mb"],
                "weights_gradients_optimizer_full_minus_lora_mb": round(static(full) - static(lora), 1),
                "rss_after_setup_full_minus_lora_mb": round(full["rss_after_setup_mb"] - lora["rss_after_setup_mb"], 1),
                "peak_rss_full_minus_lora_mb": round(full["peak_rss_mb"] - lora["peak_rss_mb"], 1),
                "peak_rss_full_minus_lora_mmap_threshold_mb": round(runs["full_mmap_threshold"]["peak_rss_mb"]
                                                                    - runs["lora_mmap_threshold"]["peak_rss_mb"], 1),
                "saved_activations_lora_minus_full_mb": round(lora["saved_activations_per_micro_batch_mb"]
                                                              - full["saved_activations_per_micro_batch_mb"], 1),
            }
    return {"bench": "lora_memory", **out, "machine": machine(threads)}


def zero(out: Path, steps: int, eval_every: int, extra: list[str]) -> dict:
    """`thinkrl zero` in a fresh process; its summary and the median seconds per step."""
    cmd = [str(ROOT / ".venv" / "bin" / "thinkrl"), "zero", "--out", str(out), "--overwrite", "--no-progress",
           f"train.steps={steps}", f"eval.every={eval_every}", "train.save_every=0", *extra]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)}\n{r.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row.get("step_seconds") is not None]
    summary = json.loads((out / "summary.json").read_text())
    q = max(1, len(train) // 4)
    return {
        "command": " ".join(cmd[1:]),
        "accuracy_start": summary["accuracy_start"], "accuracy_end": summary["accuracy_end"],
        "held_out": [(row["step"], row["eval/accuracy"]) for row in rows if row.get("eval/accuracy") is not None],
        "median_step_seconds": round(statistics.median(row["step_seconds"] for row in train), 3),
        "reward_first_quarter": round(statistics.mean(row["reward"] for row in train[:q]), 3),
        "reward_last_quarter": round(statistics.mean(row["reward"] for row in train[-q:]), 3),
        "wall_seconds": round(time.time() - t, 1),
    }


def speed(steps: int, r: int, alpha: float, lr: str, overrides: list[str]) -> dict:
    """Seconds per GRPO step of full fine-tuning and of LoRA on the embedded task, the two
    trainers in one process taking turns step by step, so that a shared machine's load falls
    on both alike; medians of each phase."""
    from thinkrl.config import load_config
    from thinkrl.train.grpo import GRPOTrainer

    base = ["run.progress=false", "data.eval=none", "train.save_every=0", f"train.steps={steps}", *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {"full": GRPOTrainer(load_config(None, base), Path(tmp) / "full"),
                    "lora": GRPOTrainer(load_config(None, [*base, *lora_args(r, alpha, lr)]), Path(tmp) / "lora")}
        rows = {k: [] for k in trainers}
        for _ in range(steps):
            for name, trainer in trainers.items():
                rows[name].append(trainer.train_step())
    med = lambda name, k: round(statistics.median(m[k] for m in rows[name][1:]), 3)  # noqa: E731 (step 1 warms up)
    out = {name: {k: med(name, k) for k in ("step_seconds", "timing/generate", "timing/update", "completion_len")}
           for name in rows}
    out["lora_over_full_step_seconds"] = round(out["lora"]["step_seconds"] / out["full"]["step_seconds"], 3)
    return out


def lora_args(r: int, alpha: float, lr: str) -> list[str]:
    return [f"model.lora.r={r}", f"model.lora.alpha={alpha}", f"optim.lr={lr}"]


def machine(threads: int | None = None) -> dict:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
            "torch": torch.__version__, "python": sys.version.split()[0]}


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("child")
    c.add_argument("--model", required=True)
    c.add_argument("--variant", required=True, choices=["full", "lora"])
    c.add_argument("--threads", type=int, default=1)
    m = sub.add_parser("memory")
    m.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("probe")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lrs", nargs="+", default=["1e-3", "2e-3", "5e-3"])
    v = sub.add_parser("speed")
    v.add_argument("--steps", type=int, default=11)
    v.add_argument("--lora-lr", default="2e-3")
    t = sub.add_parser("task")
    t.add_argument("--steps", type=int, default=60)
    t.add_argument("--eval-every", type=int, default=30)
    t.add_argument("--lora-lr", default="2e-3")
    for s in (p, t, v):
        s.add_argument("--r", type=int, default=16)
        s.add_argument("--alpha", type=float, default=32)
        s.add_argument("--out", default=None, help="keep the runs here (default: a temporary directory)")
        s.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.what == "child":
        print(json.dumps(child(args.model, args.variant, args.threads)))
        return 0
    if args.what == "memory":
        print(json.dumps(memory(args.threads), indent=1))
        return 0
    if args.what == "speed":
        result = {"bench": "lora_step_speed", "steps": args.steps,
                  **speed(args.steps, args.r, args.alpha, args.lora_lr, args.overrides)}
        print(json.dumps({**result, "machine": machine()}, indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        if args.what == "probe":
            result = {"bench": "lora_lr_probe", "steps": args.steps,
                      "runs": {lr: zero(root / f"lora_lr{lr}", args.steps, 0,
                                        [*lora_args(args.r, args.alpha, lr), "data.eval=none", *args.overrides])
                               for lr in args.lrs}}
        else:
            result = {"bench": "lora_vs_full", "steps": args.steps,
                      "lora": zero(root / "lora", args.steps, args.eval_every,
                                   [*lora_args(args.r, args.alpha, args.lora_lr), *args.overrides]),
                      "full": zero(root / "full", args.steps, args.eval_every, list(args.overrides))}
    print(json.dumps({**result, "machine": machine()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
