"""Memory per process of sharded (FSDP2) against plain data parallelism, measured: the bytes of
parameters, gradients and optimizer state each process holds after a GRPO step, per parameter
of the model, and each process's peak RSS, for `train.parallel=ddp` and `fsdp` on one or more
processes (gloo on CPU; the same code runs nccl on GPUs).

    .venv/bin/python bench/fsdp_memory.py [--procs 2] [--hidden 512] [--layers 8] [--steps 2] [--out fsdp.json]

The model is a randomly initialised Qwen2 of at least 20M parameters (hidden 512, 8 layers,
intermediate 1408, 8 heads, 2 key/value heads, the embedded tokenizer's vocabulary), saved to
a temporary directory; each configuration runs under its own torchrun, so each process's peak
RSS is its own. Bytes per parameter are counted from the tensors each process holds (its
shards with FSDP), so they do not depend on the allocator; peak RSS also holds Python,
transformers, the model's load (every process reads the whole checkpoint before sharding) and
the whole model gathered while it samples (`thinkrl.sharding.gathered`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def digit_share(completions, **kwargs):
    """Different for nearly every noisy completion, so every sample goes through the backward pass."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def make_model(directory: Path, hidden: int, layers: int) -> int:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from thinkrl.task import TINY_DIR

    tok = AutoTokenizer.from_pretrained(TINY_DIR)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                         intermediate_size=hidden * 11 // 4, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=False,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def worker(model_dir: str, out: str, parallel: str, steps: int) -> None:
    import torch

    from thinkrl import distributed, sharding
    from thinkrl.config import load_config
    from thinkrl.train.grpo import GRPOTrainer

    cfg = load_config(None, [f"model.path={model_dir}", "data.eval=none", "run.progress=false", "run.threads=1",
                             f"train.steps={steps}", "train.save_every=0", "train.prompts_per_step=4",
                             "rollout.group_size=4", "train.micro_batch_size=8", "rollout.max_new_tokens=32",
                             "rollout.stop=[]", f"train.parallel={parallel}",
                             "rewards.weights={'bench.fsdp_memory:digit_share': 1.0}", "rewards.isolate=false"])
    trainer = GRPOTrainer(cfg, Path(out) / f"run_{parallel}")
    trainer.run()

    def nbytes(tensors) -> int:
        return sum(sharding.local(t).numel() * t.element_size() for t in tensors if torch.is_tensor(t))

    params = list(trainer.policy.parameters())
    held = {"parameters": nbytes(params), "gradients": nbytes(p.grad for p in params if p.grad is not None),
            "optimizer": nbytes(v for s in trainer.optimizer.state.values() for v in s.values())}
    row = {"rank": distributed.rank(), "bytes": held,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    rows = distributed.gather_objects(row)
    if distributed.is_main():
        (Path(out) / f"{parallel}_{distributed.world_size()}.json").write_text(json.dumps(rows))
    distributed.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = make_model(tmp / "model", args.hidden, args.layers)
        for procs, parallel in [(1, "ddp"), (args.procs, "ddp"), (args.procs, "fsdp")]:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
                   str(29500 + len(results) + 7), str(Path(__file__).resolve()), "--worker", str(tmp / "model"),
                   str(tmp), parallel, str(args.steps)]
            subprocess.run(cmd, env=env, check=True, cwd=ROOT, capture_output=True, text=True)
            rows = json.loads((tmp / f"{parallel}_{procs}.json").read_text())
            for r in rows:
                total = sum(r["bytes"].values())
                results.append({"parallel": parallel, "processes": procs, "rank": r["rank"],
                                "bytes_per_parameter": {k: round(v / n, 3) for k, v in r["bytes"].items()},
                                "bytes_per_parameter_total": round(total / n, 3),
                                "held_mb": round(total / 2**20, 1), "peak_rss_mb": round(r["peak_rss_mb"], 1)})
    report = {"parameters": n, "hidden": args.hidden, "layers": args.layers, "results": results,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()}}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    print("\nparallel  procs  rank  bytes/param (params+grads+optimizer)  held MB  peak RSS MB")
    for r in results:
        print(f"{r['parallel']:8}  {r['processes']:5}  {r['rank']:4}  {r['bytes_per_parameter_total']:35}  "
              f"{r['held_mb']:7}  {r['peak_rss_mb']:11}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:5], int(sys.argv[5]))
    else:
        main()
