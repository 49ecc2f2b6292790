"""Seconds per sampling round: thinkrl's engine against the plain-PyTorch reference sampler.

    .venv/bin/python bench/sampling.py [--threads 1] [--rounds 15] [--tasks embedded,second] [--out FILE]

A round is what a GRPO step samples: 8 prompts x G 8 = 64 completions at temperature 1, top-p 1,
stopping at EOS or `</answer>`. On the embedded task (R1-Zero template, at most 80 new tokens)
and on the second task (bench/second_task.py: short prompts, at most 48 new tokens), the same
8 prompts of each round go to thinkrl's `HFEngine.generate` and to `ReferenceSampler.generate`
(bench/reference_sampler.py), which one goes first alternating from round to round, after one
warm-up round each. Reported per task: the median seconds per round of each, the ratio
thinkrl / reference (median of the per-round ratios, with min and max), the mean completion
tokens and tokens per second of each (the two sample different tokens, so lengths differ a
little; `ratio_per_token` is the per-round ratio of seconds per completion token, a rough
correction for that), the threads and the machine, with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_sampler import ReferenceSampler  # noqa: E402
from second_task import ensure  # noqa: E402

PROMPTS, G, STOP = 8, 8, "</answer>"


def _questions(path: str) -> list[str]:
    with open(path) as f:
        return [json.loads(line)["question"] for line in f if line.strip()]


def run_task(name: str, model_dir: str, train: str, template: str, max_new_tokens: int, rounds: int, seed: int) -> dict:
    from thinkrl.policy import load_model, load_tokenizer
    from thinkrl.rollout.engine import SamplingParams
    from thinkrl.rollout.hf import HFEngine
    from thinkrl.template import render

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, torch.device("cpu"), requires_grad=False)
    stop_id = tok.convert_tokens_to_ids(STOP)
    if tok.convert_ids_to_tokens(stop_id) != STOP:
        raise ValueError(f"{STOP} is not one token of {model_dir}'s tokenizer; the reference stops on a token id")
    eos = model.generation_config.eos_token_id
    stop_ids = {tok.eos_token_id, stop_id, *(eos if isinstance(eos, list) else [eos])} - {None}
    engine, ref = HFEngine(model, tok, "cpu"), ReferenceSampler(model)
    params = SamplingParams(n=G, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens, stop=[STOP])
    qs = _questions(train)
    rows = []
    for r in range(rounds + 1):  # round 0 warms both sides up
        prompts = [tok(render(q, template), add_special_tokens=False)["input_ids"]
                   for q in qs[r * PROMPTS:(r + 1) * PROMPTS]]
        res = {}
        for side in (("thinkrl", "reference") if r % 2 == 0 else ("reference", "thinkrl")):
            gen = torch.Generator().manual_seed(seed * 1000 + r)
            t0 = time.perf_counter()
            if side == "thinkrl":
                lengths = [len(c) for c in engine.generate(prompts, params, generator=gen).completion_ids]
            else:
                lengths = [len(c) for c in ref.generate(prompts, G, max_new_tokens, 1.0, stop_ids, generator=gen)]
            res[side] = {"seconds": time.perf_counter() - t0, "tokens": sum(lengths), "completions": len(lengths)}
        if r > 0:
            rows.append(res)
    med = lambda side, key: statistics.median(x[side][key] for x in rows)  # noqa: E731
    ratios = [x["thinkrl"]["seconds"] / x["reference"]["seconds"] for x in rows]
    per_token = [(x["thinkrl"]["seconds"] * x["reference"]["tokens"])
                 / (x["reference"]["seconds"] * x["thinkrl"]["tokens"]) for x in rows]

    def spread(v):
        return {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3)}

    out = {"task": name, "model": model_dir, "parameters": sum(p.numel() for p in model.parameters()),
           "rounds": len(rows), "completions_per_round": PROMPTS * G, "max_new_tokens": max_new_tokens,
           "mean_prompt_tokens": None, "ratio_thinkrl_over_reference": spread(ratios),
           "ratio_per_token": spread(per_token)}
    for side in ("thinkrl", "reference"):
        secs, toks = [x[side]["seconds"] for x in rows], [x[side]["tokens"] for x in rows]
        out[side] = {"median_seconds_per_round": round(med(side, "seconds"), 4),
                     "mean_completion_tokens": round(sum(toks) / sum(x[side]["completions"] for x in rows), 2),
                     "tokens_per_second": round(sum(toks) / sum(secs), 1),
                     "seconds_per_round": [round(s, 4) for s in secs]}
    used = qs[:(rounds + 1) * PROMPTS]
    prompt_lens = [len(tok(render(q, template), add_special_tokens=False)["input_ids"]) for q in used]
    out["mean_prompt_tokens"] = round(sum(prompt_lens) / len(prompt_lens), 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--rounds", type=int, default=15, help="measured rounds per task, after one warm-up round")
    ap.add_argument("--tasks", default="embedded,second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="the second task's directory (default bench/.cache/second_task)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        ap.error("--rounds and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    from thinkrl.policy import resolve_model_path

    load_before, t0 = os.getloadavg()[0], time.time()
    results = {}
    for name in args.tasks.split(","):
        if name == "embedded":
            path = resolve_model_path("embedded")
            spec = (path, f"{path}/train.jsonl", "r1_zero", 80)
        elif name == "second":
            task = ensure(args.cache, threads=args.threads)
            spec = (task.model, task.train, task.template, task.max_new_tokens)
        else:
            ap.error(f"unknown task {name!r}: embedded or second")
        results[name] = run_task(name, *spec, rounds=args.rounds, seed=args.seed)
    result = {"bench": "sampling_round", "tasks": results,
              "settings": {"prompts": PROMPTS, "G": G, "temperature": 1.0, "top_p": 1.0, "stop": STOP,
                           "seed": args.seed},
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "python": sys.version.split()[0], "load_average_1min_before": load_before,
                          "load_average_1min_after": os.getloadavg()[0], "wall_seconds": round(time.time() - t0, 1)}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
