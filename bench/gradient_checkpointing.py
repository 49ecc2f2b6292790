"""Gradient checkpointing on GRPO's training forward+backward: peak memory and time with and
without it, as JSON.

    .venv/bin/python bench/gradient_checkpointing.py [--threads 1] [--completions 16] [--group 8]
        [--prompt-len 100] [--completion-len 256] [--vocab 406] [--repeats 3] [--device cpu|cuda]
        [--variants shared,shared+ckpt[,plain,plain+ckpt]]

About 2 minutes on 2 busy CPU cores with the defaults. The model is a randomly initialised
Qwen2 (hidden 512, 8 layers, intermediate 1408, 8 heads, 4 KV heads, tied embeddings): 23.8M
parameters with the embedded tokenizer's 406 tokens (the default), 40M with --vocab 32000,
where the logits (and their float copies) take a large share of the memory. The batch is what
the GRPO trainer hands `policy.completion_logprobs` for one micro-batch: completions/group
prompts of --prompt-len tokens (left-padded to 20% shorter and longer), --group completions
of each, 50-100% of --completion-len tokens long (right-padded). The measured work is one
training forward (temperature 0.9) + the GRPO loss (random advantages, μ = 1) + backward.

Variants, each in a fresh subprocess (so one's memory cannot hide another's); the last two
only when asked for (--variants):
  shared        prompts run once per group (the default), no checkpointing
  shared+ckpt   the same with train.gradient_checkpointing (what thinkrl runs with it on)
  plain         every row runs its prompt, no checkpointing
  plain+ckpt    the same, checkpointed (what a plain-path design would have cost)

Memory. CPU: the peak resident set (getrusage ru_maxrss) minus the resident set just before
the first forward (/proc/self/statm), after model, batch and the untimed imports are in place:
what the forward+backward adds at its peak, gradients included (they are allocated in the
backward and kept). The subtraction is honest only if the run sets a new peak, which is
checked (`new_peak`). The children run with MALLOC_MMAP_THRESHOLD_=131072: glibc then maps
every block of 128 KiB or more on its own and unmaps it when freed, so the resident set
follows the live tensors. With glibc's default (a threshold that grows to 32 MiB as blocks are
freed) freed memory stays resident and the peak measures the allocator's history: here, at
--completion-len 128, 1000 MB without and 803 MB with checkpointing, against 876 and 383 MB
with the fixed threshold, which match autograd's account below. --malloc-default keeps
glibc's default.
CUDA: torch.cuda.max_memory_allocated minus the allocation before.
Autograd's own account is printed too: the bytes of the tensors it saves for the backward
(saved_tensors_hooks), per token of the batch. With checkpointing that count leaves out the
layer inputs the checkpoints keep (one hidden vector per layer and token: 8 × 512 × 4 bytes
= 16 KiB per token here), which are added (`checkpoint_inputs_mb`).

Time: median of --repeats runs; the first is also the memory run.
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
import time

VARIANTS = {"shared": (True, False), "shared+ckpt": (True, True), "plain": (False, False),
            "plain+ckpt": (False, True)}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from thinkrl.objective import Normaliser, grpo_loss
    from thinkrl.policy import SequenceBatch, completion_logprobs, disable_dropout, enable_gradient_checkpointing

    share, ckpt = VARIANTS[args.child]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    model = disable_dropout(Qwen2ForCausalLM(config)).to(device).train()
    if ckpt:
        enable_gradient_checkpointing(model)
    gen = torch.Generator().manual_seed(1)
    groups = args.completions // args.group
    prompts, comps, gids = [], [], []
    for g in range(groups):
        n = int(args.prompt_len * (0.8 + 0.4 * g / max(groups - 1, 1)))
        prompt = torch.randint(1, args.vocab, (n,), generator=gen).tolist()
        for _ in range(args.group):
            length = int(args.completion_len * (0.5 + 0.5 * torch.rand((), generator=gen).item()))
            prompts.append(prompt)
            comps.append(torch.randint(1, args.vocab, (length,), generator=gen).tolist())
            gids.append(g)
    batch = SequenceBatch.build(prompts, comps, 0, device, group_ids=gids)
    adv = torch.randn(len(batch), generator=gen).to(device)
    norm = Normaliser.of(batch.completion_mask)
    saved, seen = [0], {p.untyped_storage().data_ptr() for p in model.parameters()}  # weights cost nothing new

    def pack(t):  # each storage once: q, k and v projections save the same input
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            saved[0] += storage.nbytes()
        return t

    def step() -> float:
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            logp = completion_logprobs(model, batch, temperature=0.9, share_prompts=share)
            loss, _ = grpo_loss(logp, None, adv, batch.completion_mask, norm=norm)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    before_rss, before_peak = rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = [step()]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {"variant": args.child, "new_peak": peak > before_peak}
    if device.type == "cuda":
        out["peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        out["peak_mb"] = (peak - before_rss) / 2**20
    saved_first = saved[0]
    seen.difference_update(seen - {p.untyped_storage().data_ptr() for p in model.parameters()})
    times += [step() for _ in range(args.repeats - 1)]
    tokens = int(batch.attention_mask.sum())  # real tokens of the batch (every row's prompt and completion)
    run_tokens = tokens - (sum(len(p) for p in prompts[:: args.group]) * (args.group - 1) if share else 0)
    out.update(seconds=statistics.median(times), times=[round(t, 3) for t in times],
               saved_tensors_mb=saved_first / 2**20, checkpoint_inputs_mb=0.0,
               params_m=sum(p.numel() for p in model.parameters()) / 1e6,
               gradients_mb=sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, batch_tokens=tokens,
               forward_tokens=run_tokens, padded_positions=int(batch.attention_mask.numel()),
               completion_tokens=int(batch.completion_mask.sum()))
    if ckpt:  # kept by the checkpoints themselves: each layer's input for every (padded) position it ran
        width = batch.input_ids.shape[1] if not share else batch.completion_ids.shape[1]
        out["checkpoint_inputs_mb"] = config.num_hidden_layers * len(batch) * width * config.hidden_size * 4 / 2**20
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--completions", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=100)
    ap.add_argument("--completion-len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=406)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default="shared,shared+ckpt")
    ap.add_argument("--malloc-default", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.completions % args.group:
        ap.error("--completions must be a multiple of --group")
    if args.child:
        print(json.dumps(child(args)))
        return 0
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.1f} before starting; times are noisy", file=sys.stderr)
    results = {}
    for name in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", name] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                                             if k not in ("child", "variants", "malloc_default")]
        env = dict(os.environ) if args.malloc_default else {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name:12s} peak {results[name]['peak_mb']:8.1f} MB  {results[name]['seconds']:7.2f} s", file=sys.stderr)
    summary = {}
    for base, other in (("shared", "shared+ckpt"), ("plain", "plain+ckpt"), ("shared", "plain+ckpt")):
        if base in results and other in results:
            a, b = results[base], results[other]
            summary[f"{other} / {base}"] = {"peak_memory": round(b["peak_mb"] / a["peak_mb"], 3),
                                            "time": round(b["seconds"] / a["seconds"], 3)}
    per_token = {}
    for name, r in results.items():  # what autograd keeps (plus the checkpoints' inputs), per token run
        per_token[name] = round((r["saved_tensors_mb"] + r["checkpoint_inputs_mb"]) * 1024 / r["forward_tokens"], 1)
    if "shared" in results and "shared+ckpt" in results:
        a, b = results["shared"], results["shared+ckpt"]
        summary["peak_saved_per_completion_token_kib"] = round((a["peak_mb"] - b["peak_mb"]) * 1024
                                                               / a["completion_tokens"], 1)
    print(json.dumps({"bench": "gradient_checkpointing", "results": results, "ratios": summary,
                      "activation_kib_per_token_run": per_token,
                      "setup": {k: v for k, v in vars(args).items() if k != "child"},
                      "machine": {"cpu": platform.processor() or platform.machine(), "load_avg_1min": load,
                                  "python": sys.version.split()[0]}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
