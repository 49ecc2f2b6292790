"""`thinkrl eval`: a model judged by the DeepSeek-R1 protocol (docs/EVALUATION.md).

For each benchmark question, K samples at temperature 0.6 and top-p 0.95 (never greedy),
drawn by the same rollout engine as training, batched. Then, per benchmark:

- pass@1 = mean correctness over the K samples of a question, averaged over questions;
- cons@K = the majority answer of the K samples is correct (answers vote together when the
  math verifier finds them equivalent; ties go to the answer first seen); math only;
- pass@k for k ≤ K by the unbiased estimator of Chen et al. 2021;
- each with its standard error over questions; mean response length (tokens), format rate,
  reflective-word rate, and the same broken down by difficulty level where rows have one.

Math rows are scored by the `accuracy` reward, code rows by the `code` reward (executed in
the sandbox; correct = every test passes). Files written to OUT: `results.json` (per
benchmark), `samples.jsonl` (every sample with its extracted answer, correctness, reason and
length). A question whose prompt leaves no room for the completion in the model's context is
skipped and counted.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..metrics import has_reflection, mean
from ..sections import EvalProtocol, RunOptions, run_problems
from .estimators import default_ks, mean_and_se, pass_at_1, pass_at_k_table


@dataclass
class EvalSettings(EvalProtocol):
    """`thinkrl eval`: the R1 protocol (`sections.EvalProtocol`, as in training) with more samples
    and longer answers than a training run can afford every N steps, so smaller batches."""
    samples: int = 16  # K per question (R1: 16 for MATH-500, 64 for AIME)
    max_new_tokens: int | None = None  # None: min(512, half the model's context)
    batch_size: int = 64  # completions per generate call
    template: str = "r1_zero"  # r1_zero | chat | none | a string with {prompt}
    seed: int = 0
    limit: int | None = None  # at most this many questions per benchmark
    stop: list[str] = field(default_factory=lambda: ["</answer>"])


def majority(classes: list[int | None]) -> int | None:
    """Index of the first member of the most voted class (ties: the class seen first)."""
    counts = Counter(c for c in classes if c is not None)
    if not counts:
        return None
    best = min(counts, key=lambda c: (-counts[c], classes.index(c)))
    return classes.index(best)


def _score(kind: str, rows: list[dict], texts: list[str]) -> list:
    """One Scored per completion (rows aligned with texts)."""
    from ..rewards import get_reward

    if kind == "code":
        return get_reward("code").scores(texts, tests=[r["tests"] for r in rows],
                                         entry_point=[r.get("entry_point") for r in rows], mode="all",
                                         prompt=[r.get("prompt") for r in rows])  # its helpers are trusted
    return get_reward("accuracy").scores(texts, answer=[r["answer"] for r in rows])


def evaluate_rows(engine, tokenizer, rows: list[dict], s: EvalSettings, context: int | None = None,
                  progress=None) -> tuple[dict, list[dict]]:
    """(summary, samples) for one benchmark's rows."""
    from ..rewards.format import format_reward
    from ..rewards.math import extract_answer
    from ..rollout.sample import SampleSettings, sample_with
    from .estimators import math_equivalence_classes

    K = s.samples
    # sampled as every other sampler does (rollout.sample): K per question, batch_size // K
    # questions per generate call, one generator seeded s.seed, questions that do not fit skipped
    got = sample_with(engine, tokenizer, rows, SampleSettings.protocol(s, template=s.template, stop=list(s.stop),
                                                                      seed=s.seed), context, progress=progress)
    kept = [got[i]["row"] for i in range(0, len(got), K)]
    skipped = len(rows) - len(kept)
    per_call = max(1, s.batch_size // K)
    samples: list[dict] = []
    correct: list[list[bool]] = []
    cons: list[bool] = []
    for start in range(0, len(kept), per_call):  # scored in the batches they were sampled in
        batch = kept[start: start + per_call]
        texts = [g["completion"] for g in got[start * K: (start + len(batch)) * K]]
        lengths = [g["n_tokens"] for g in got[start * K: (start + len(batch)) * K]]
        expanded = [r for r in batch for _ in range(K)]
        kind = batch[0]["kind"]
        scored = _score(kind, expanded, texts)
        formatted = format_reward(texts)
        for q, r in enumerate(batch):
            group = range(q * K, (q + 1) * K)
            ok = [bool(scored[i].value == 1.0) for i in group]
            correct.append(ok)
            answers = [extract_answer(texts[i]) for i in group] if kind == "math" else [None] * K
            if kind == "math":
                winner = majority(math_equivalence_classes(answers))
                cons.append(winner is not None and ok[winner])
            for j, i in enumerate(group):
                samples.append({"id": r["id"], "sample": j, "level": r.get("level"), "completion": texts[i],
                                "answer": answers[j], "correct": ok[j], "reward": scored[i].value,
                                "reason": scored[i].reason, "length": lengths[i],
                                "format": formatted[i], "reflection": has_reflection(texts[i])})
    summary: dict = {"n_questions": len(kept), "samples": K, "skipped_too_long": skipped}
    if not kept:
        return summary, samples
    p1, se = pass_at_1(correct)
    summary["pass@1"] = {"mean": p1, "se": se}
    if cons:
        m, se = mean_and_se([float(c) for c in cons])
        summary[f"cons@{K}"] = {"mean": m, "se": se}
    summary["pass@k"] = {str(k): {"mean": m, "se": se} for k, (m, se) in pass_at_k_table(correct, default_ks(K)).items()}
    summary["mean_length"] = mean([x["length"] for x in samples])
    summary["format_rate"] = mean([x["format"] for x in samples])
    summary["reflection_rate"] = mean([float(x["reflection"]) for x in samples])
    levels = sorted({x["level"] for x in samples if x["level"] is not None}, key=str)
    if levels:
        summary["by_level"] = {}
        for lv in levels:
            qs = [c for c, r in zip(correct, kept) if r.get("level") == lv]
            m, se = pass_at_1(qs)
            summary["by_level"][str(lv)] = {"n_questions": len(qs), "pass@1": {"mean": m, "se": se},
                                            "mean_length": mean([x["length"] for x in samples if x["level"] == lv])}
    return summary, samples


def run_eval(model: str, benchmarks: list[str], out: str | Path, settings: EvalSettings | None = None,
             data_dir: str | None = None, device: str = "auto", show_progress: bool = True) -> dict:
    """Evaluate `model` (a local directory, a hub id or "embedded") on each benchmark; write
    OUT/results.json and OUT/samples.jsonl; return the results."""
    from ..policy import load_model, load_tokenizer, resolve_device
    from ..rollout import make_engine
    from .benchmarks import load_benchmark

    s = EvalSettings(**asdict(settings)) if settings else EvalSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = {name: load_benchmark(name, data_dir, limit=s.limit) for name in benchmarks}  # fail early on data
    dev = resolve_device(device)
    tokenizer = load_tokenizer(model)
    policy = load_model(model, dev, requires_grad=False)
    context = getattr(policy.config, "max_position_embeddings", None)
    if s.max_new_tokens is None:
        s.max_new_tokens = min(512, context // 2) if context else 512
    engine = make_engine("hf", policy, tokenizer, dev)
    results: dict = {"model": model, "settings": asdict(s), "benchmarks": {}}
    t0 = time.time()
    tmp = out / "samples.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f, _progress(sum(len(r) for r in loaded.values()), show_progress) as bar:
        for name, rows in loaded.items():
            started = time.time()
            with torch.inference_mode():
                summary, samples = evaluate_rows(engine, tokenizer, rows, s, context, progress=bar.update)
            summary["seconds"] = round(time.time() - started, 2)
            results["benchmarks"][name] = summary
            for x in samples:
                f.write(json.dumps({"benchmark": name, **x}, ensure_ascii=False) + "\n")
    os.replace(tmp, out / "samples.jsonl")
    results["seconds"] = round(time.time() - t0, 2)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


class _progress:
    def __init__(self, total: int, show: bool):
        self.bar = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="question", desc="eval", dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def format_results(results: dict) -> str:
    """The printed table: one row per benchmark."""
    def pm(d):
        return f"{100 * d['mean']:5.1f} ± {100 * d['se']:.1f}" if d else "-"

    lines = [f"{'benchmark':<22} {'n':>5} {'K':>3}  {'pass@1 (%)':>12}  {'cons@K (%)':>12}  {'pass@K (%)':>12}  {'len':>6}"]
    for name, b in results["benchmarks"].items():
        K = b["samples"]
        if not b["n_questions"]:
            lines.append(f"{name:<22} {0:>5} {K:>3}  (no question fits the model's context; {b['skipped_too_long']} skipped)")
            continue
        lines.append(f"{name:<22} {b['n_questions']:>5} {K:>3}  {pm(b['pass@1']):>12}  {pm(b.get(f'cons@{K}')):>12}  "
                     f"{pm(b['pass@k'][str(K)]):>12}  {b['mean_length']:>6.1f}"
                     + (f"  ({b['skipped_too_long']} too long, skipped)" if b["skipped_too_long"] else ""))
    return "\n".join(lines)


@dataclass
class EvalRunConfig:
    """`thinkrl eval`'s settings (`--config`, `section.key=value`; the flags are shortcuts)."""
    model: str = "embedded"  # a local directory, a hub id or "embedded"
    benchmarks: list[str] = field(default_factory=lambda: ["embedded"])  # see evaluation.benchmarks
    data_dir: str | None = None  # the benchmark files (default $THINKRL_DATA)
    device: str = "auto"
    eval: EvalSettings = field(default_factory=EvalSettings)
    run: RunOptions = field(default_factory=RunOptions)  # run.seed is the sampling seed


def eval_problems(cfg: EvalRunConfig) -> list[str]:
    s = cfg.eval
    errors = [f"eval.{k}={v} must be >= 1" for k, v in (("samples", s.samples), ("batch_size", s.batch_size),
                                                           ("limit", s.limit), ("max_new_tokens", s.max_new_tokens))
              if v is not None and v < 1]
    if not (s.temperature > 0 and 0 < s.top_p <= 1):
        errors.append("eval.temperature must be > 0 (the R1 protocol samples, never greedy) and eval.top_p in (0, 1]")
    errors += run_problems(cfg.run)
    if not cfg.benchmarks:
        errors.append("benchmarks is empty: name at least one (--benchmark embedded)")
    return errors
