"""Held-out evaluation during and after training, by the R1 protocol: sampled answers
(temperature 0.6, top-p 0.95 by default), accuracy = mean correctness over the samples
(pass@1), broken down by difficulty level, with response length, format rate and the rate
of reflective words (any, and each word's occurrences per response)."""

from __future__ import annotations

import torch

from ..metrics import REFLECTION_WORDS, by_level, mean, reflection_counts
from ..rollout import SamplingParams


def evaluate(engine, prompt_ids: list[list[int]], rows: list[dict], cfg, seed: int, prefix: str = "eval") -> dict:
    """Metrics of one evaluation pass; `seed` fixes the samples so that a resumed run and an
    uninterrupted one evaluate identically, without touching the training random streams."""
    from ..rewards import get_reward

    accuracy, fmt = get_reward("accuracy"), get_reward("format")
    e = cfg.eval
    params = SamplingParams(n=e.samples, temperature=e.temperature, top_p=e.top_p,
                            max_new_tokens=e.max_new_tokens, stop=list(cfg.rollout.stop))
    gen = torch.Generator().manual_seed(seed)
    correct, fmt_ok, lengths, reflect, levels, words = [], [], [], [], [], []
    per_batch = max(1, e.batch_size // e.samples)
    for start in range(0, len(rows), per_batch):
        batch_rows = rows[start: start + per_batch]
        out = engine.generate(prompt_ids[start: start + per_batch], params, generator=gen)
        expanded = [r for r in batch_rows for _ in range(e.samples)]
        answers = [r["answer"] for r in expanded]
        correct += accuracy(out.texts, answer=answers)
        fmt_ok += fmt(out.texts)
        lengths += [len(c) for c in out.completion_ids]
        counts = [reflection_counts(t) for t in out.texts]
        words += counts
        reflect += [float(any(c.values())) for c in counts]  # one regex pass gives both
        levels += [r.get("level") for r in expanded]
    result = {
        f"{prefix}/accuracy": mean(correct),
        f"{prefix}/format_rate": mean(fmt_ok),
        f"{prefix}/completion_len": mean(lengths),
        f"{prefix}/reflection_rate": mean(reflect),
    }
    # the "aha moment" analysis: occurrences of each reflective word per response
    result.update({f"{prefix}/reflection/{w}": mean([c[w] for c in words]) for w in REFLECTION_WORDS})
    # by_level adds nothing when no row has a level
    result.update(by_level(correct, levels, f"{prefix}/accuracy"))
    result.update(by_level(lengths, levels, f"{prefix}/completion_len"))
    return result
