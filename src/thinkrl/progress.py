"""What a user watches: a progress bar with ETA and a live line of the key metrics."""

from __future__ import annotations

import math
import sys

from tqdm.auto import tqdm

LIVE = (("reward", "reward", "{:.2f}"), ("acc", "rewards/accuracy", "{:.2f}"), ("len", "completion_len", "{:.0f}"),
        ("kl", "kl", "{:.4f}"), ("clip", "clip_frac", "{:.3f}"), ("eval", "eval/accuracy", "{:.3f}"))


def live_line(m: dict) -> str:
    parts = []
    for label, key, fmt in LIVE:
        v = m.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            parts.append(f"{label}={fmt.format(v)}")
    return " ".join(parts)


class Progress:
    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self.bar = tqdm(total=total, initial=initial, desc="GRPO", unit="step", dynamic_ncols=True,
                        file=sys.stderr, disable=not enabled, mininterval=0.5)
        self.last_eval = None

    def update(self, m: dict) -> None:
        if m.get("eval/accuracy") is not None:
            self.last_eval = m["eval/accuracy"]
        shown = dict(m)
        if self.last_eval is not None:
            shown.setdefault("eval/accuracy", self.last_eval)
        self.bar.set_postfix_str(live_line(shown), refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
