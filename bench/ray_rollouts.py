"""Rollouts in this process against Ray rollout workers (rollout.engine=ray), as JSON.

    .venv/bin/python bench/ray_rollouts.py [--questions 8] [--group 8] [--max-new-tokens 80] [--repeat 3]
                                           [--workers 1 2] [--threads 1] [--address ""]

On the embedded model: seconds per generate call of questions x group completions (64 by
default, the r1_zero prompt, stop at </answer>, temperature 1) with HFEngine in this process
(`--threads` torch threads) and with RayEngine at each worker count (one torch thread and one
reserved CPU per worker); the seconds to start the workers; and the seconds of a weight sync
(the state dict put in the object store and loaded by every worker, until the last has
loaded it). Each figure is the median of `--repeat` calls after one warm-up call, call k with
seed k at every setting (the samples themselves differ with the chunking, so the lengths can
differ a little: tokens/s is printed too; tests/test_ray.py checks the samples exactly).

A local Ray cluster with max(workers) CPUs is started unless `--address` names one. Absolute
numbers mean something only beside the machine (printed) and its load (printed before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from thinkrl.policy import load_model, load_tokenizer, resolve_model_path
from thinkrl.rollout import SamplingParams, make_engine
from thinkrl.template import render


def timed_calls(engine, prompts, params, repeat: int) -> dict:
    engine.generate(prompts, params, generator=torch.Generator().manual_seed(0))  # warm-up
    secs, tokens = [], 0
    for k in range(repeat):
        t = time.perf_counter()
        out = engine.generate(prompts, params, generator=torch.Generator().manual_seed(k + 1))
        secs.append(time.perf_counter() - t)
        tokens += out.num_tokens
    med = statistics.median(secs)
    return {"s_per_call": round(med, 3), "calls_s": [round(s, 3) for s in secs],
            "completions_per_call": len(out), "tokens_per_s": round(tokens / sum(secs), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the in-process engine")
    ap.add_argument("--address", default="", help="a Ray cluster to join; default: start a local one")
    args = ap.parse_args()

    import ray

    torch.set_num_threads(args.threads)
    path = resolve_model_path("embedded")
    model, tok = load_model(path, torch.device("cpu")), load_tokenizer(path)
    questions = [f"What is {17 * k + 5} + {29 * k + 3}?" for k in range(args.questions)]
    prompts = [tok(render(q, "r1_zero", tok), add_special_tokens=False)["input_ids"] for q in questions]
    params = SamplingParams(n=args.group, temperature=1.0, max_new_tokens=args.max_new_tokens, stop=["</answer>"])
    result = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "load_average_1min_before": round(os.getloadavg()[0], 2)},
              "work": {"questions": args.questions, "group": args.group, "max_new_tokens": args.max_new_tokens,
                       "repeat": args.repeat}}

    result["local"] = {"threads": args.threads, **timed_calls(make_engine("hf", model, tok, "cpu"), prompts, params,
                                                             args.repeat)}
    t = time.perf_counter()
    if args.address:
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    else:
        ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    result["ray_init_s"] = round(time.perf_counter() - t, 2)
    for w in args.workers:
        t = time.perf_counter()
        engine = make_engine("ray", model, tok, "cpu", workers=w, model_path=path)
        started = time.perf_counter() - t
        try:
            run = timed_calls(engine, prompts, params, args.repeat)
            syncs = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                engine.sync_weights(model)
                ray.get([a.ready.remote() for a in engine.actors])  # queued after the loads: all have loaded
                syncs.append(time.perf_counter() - t)
            run["weight_sync_s"] = round(statistics.median(syncs), 3)
        finally:
            engine.close()
        result[f"ray_{w}_workers"] = {"start_s": round(started, 2), **run}
    ray.shutdown()
    result["weights_mb"] = round(sum(v.numel() * v.element_size() for v in model.state_dict().values()) / 2**20, 1)
    result["machine"]["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
