"""Weighted sum of named rewards, each logged on its own.

A reward that raises is logged with its input and scores 0 for the batch; it never kills the
run. None ("not applicable") adds nothing to the total and is left out of that reward's mean.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger("thinkrl.rewards")


class WeightedRewards:
    def __init__(self, weights: dict[str, float]):
        from . import get_reward

        self.weights = dict(weights)
        self.fns = {name: get_reward(name) for name in weights}

    def __call__(self, completions: list[str], rows: list[dict], prompts: list[str] | None = None):
        """Returns (total [N] floats, {name: [N] float | None})."""
        columns = {k: [r.get(k) for r in rows] for k in rows[0]} if rows else {}
        per: dict[str, list] = {}
        for name, fn in self.fns.items():
            try:
                values = list(fn(completions, prompts=prompts, **columns))
                if len(values) != len(completions):
                    raise ValueError(f"returned {len(values)} values for {len(completions)} completions")
            except Exception as e:  # a broken reward must not end the run
                log.warning("reward %r raised %s: %s (first completion: %r); scoring 0",
                            name, type(e).__name__, e, completions[0][:200] if completions else "")
                values = [0.0] * len(completions)
            per[name] = [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
        total = [sum(self.weights[n] * (per[n][i] or 0.0) for n in per) for i in range(len(completions))]
        return total, per
