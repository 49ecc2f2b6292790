"""Sampling throughput on a GPU: thinkrl's engine against transformers' `generate`, at
Qwen2.5-0.5B's shape (random weights, the model and tokenizer `gpu_step.py` builds), 8 prompts
x G 16 = 128 sequences x 512 new tokens, as JSON.

    PYTHONPATH=src python bench/gpu_sampling.py --out $OUT/gpu_sampling.json   # on the device machine
    .venv/bin/python bench/gpu_sampling.py --tiny --threads 1                   # CPU smoke test, < 1 min

Each precision (`--dtypes`, default float32,bfloat16) is measured on the same weights:
- float32: the fp32 model as thinkrl's trainer holds it, no autocast (what every engine
  does today);
- bfloat16: the model cast to bf16 (what a bf16 sampler would read).
Three samplers per precision, each after one warm-up call, `--repeats` timed calls, the median:
- `thinkrl`: `HFEngine.generate` (StaticKV: prompt pre-filled once per group, rows dropped as
  they stop, per-token log-probs);
- `hf_dynamic`: `model.generate(do_sample=True, num_return_sequences=16)`, transformers'
  default growing cache;
- `hf_static`: the same with `cache_implementation="static"` (a preallocated cache, no
  torch.compile).
A random model writes noise: no stop string, EOS about 1 in 150k, so nearly every sequence
runs 512 tokens. Tokens/s counts the new tokens each sampler returned. T 1, top-p 1, top-k 0.
CUDA is synchronised around each call; peak memory is torch.cuda.max_memory_allocated per
sampler. Without a GPU only --tiny runs (exit 2 otherwise), and its JSON says it is a smoke test.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_step import EOS_ID, QWEN25_05B, SPECIALS, TINY, machine, write_model  # noqa: E402


def timed(fn, sync) -> tuple[float, int]:
    """(seconds, fn()) with the device synchronised before and after."""
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers, 2 prompts x 4, 16 new tokens (CPU)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--samplers", default="thinkrl,hf_dynamic,hf_static")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    from thinkrl.policy import load_model, load_tokenizer
    from thinkrl.rollout import make_engine
    from thinkrl.rollout.engine import SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.tiny:
        print("gpu_sampling: no CUDA GPU here; use --tiny for a CPU smoke test", file=sys.stderr)
        return 2
    dev = torch.device("cuda" if on_gpu else "cpu")
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    shape = TINY if args.tiny else QWEN25_05B
    prompts, group, new, prompt_len = (2, 4, 16, 24) if args.tiny else (8, 16, 512, 100)
    report = {"bench": "gpu_sampling", "machine": machine(),
              "mode": "GPU measurement" if on_gpu else "CPU smoke test: not a GPU measurement",
              "settings": dict(prompts=prompts, group_size=group, max_new_tokens=new, prompt_tokens=prompt_len,
                               repeats=args.repeats), "results": {}}
    rng = random.Random(0)
    ids = [[rng.randrange(shape["vocab_size"] - len(SPECIALS)) for _ in range(prompt_len)] for _ in range(prompts)]
    with tempfile.TemporaryDirectory(prefix="gpu_sampling_") as tmp:
        report["model"] = write_model(Path(tmp), shape)
        tokenizer = load_tokenizer(tmp)
        base = load_model(tmp, dev)  # fp32, requires_grad: as the trainer's policy
        batch = torch.tensor(ids, device=dev)
        for dtype in args.dtypes.split(","):
            model = base if dtype == "float32" else load_model(tmp, dev, requires_grad=False).to(getattr(torch, dtype))
            engine = make_engine("hf", model, tokenizer, dev)
            params = SamplingParams(n=group, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new, stop=[])

            def hf(cache):
                kw = {"cache_implementation": "static"} if cache == "static" else {}
                with torch.no_grad():
                    out = model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=True,
                                         temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new,
                                         num_return_sequences=group, pad_token_id=EOS_ID, eos_token_id=EOS_ID, **kw)
                return int((out[:, prompt_len:] != EOS_ID).sum())

            runs = {"thinkrl": lambda: sum(map(len, engine.generate(ids, params, torch.Generator().manual_seed(0))
                                               .completion_ids)),
                    "hf_dynamic": lambda: hf("dynamic"), "hf_static": lambda: hf("static")}
            for name in args.samplers.split(","):
                res: dict = {}
                try:
                    runs[name]()  # warm-up (and the engine's first-use check)
                    if on_gpu:
                        torch.cuda.reset_peak_memory_stats()
                    secs, tokens = zip(*(timed(runs[name], sync) for _ in range(args.repeats)))
                    res = {"seconds": statistics.median(secs), "new_tokens": tokens[-1],
                           "tokens_per_s": tokens[-1] / statistics.median(secs), "all_seconds": list(secs)}
                    if on_gpu:
                        res["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
                except Exception as e:  # one sampler failing must not hide the others' numbers
                    res = {"error": f"{type(e).__name__}: {e}"}
                report["results"][f"{dtype}/{name}"] = res
                print(f"{dtype:9} {name:11} " + (f"{res['tokens_per_s']:10.0f} tokens/s  {res['seconds']:.2f} s"
                                               if "error" not in res else res["error"]), file=sys.stderr)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 1 if any("error" in r for r in report["results"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
