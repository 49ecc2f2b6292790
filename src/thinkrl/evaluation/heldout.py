"""Held-out evaluation during and after training, by the R1 protocol: sampled answers
(temperature 0.6, top-p 0.95 by default), accuracy = mean correctness over the samples
(pass@1), broken down by difficulty level, with response length, format rate and the rate
of reflective words (any, and each word's occurrences per response)."""

from __future__ import annotations

from ..metrics import REFLECTION_WORDS, by_level, mean, reflection_counts
from ..rollout.sample import SampleSettings, sample_with


def evaluate(engine, prompt_ids: list[list[int]], rows: list[dict], cfg, seed: int, prefix: str = "eval",
             context: int | None = None) -> dict:
    """Metrics of one evaluation pass; `seed` fixes the samples so that a resumed run and an
    uninterrupted one evaluate identically, without touching the training random streams.
    `cfg.eval` is the protocol (`sections.EvalProtocol`), `cfg.rollout.stop` the stop strings;
    a prompt that leaves no room for `max_new_tokens` in `context` is skipped."""
    from ..rewards import get_reward

    accuracy, fmt = get_reward("accuracy"), get_reward("format")
    s = SampleSettings.protocol(cfg.eval, stop=list(cfg.rollout.stop), seed=seed)
    got = sample_with(engine, None, rows, s, context, prompt_ids=prompt_ids)
    texts = [g["completion"] for g in got]
    correct = accuracy(texts, answer=[g["row"]["answer"] for g in got])
    fmt_ok = fmt(texts)
    lengths = [g["n_tokens"] for g in got]
    words = [reflection_counts(t) for t in texts]
    reflect = [float(any(c.values())) for c in words]  # one regex pass gives both
    levels = [g["row"].get("level") for g in got]
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
