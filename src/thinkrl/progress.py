"""What a user watches: a progress bar with ETA and a live line of the key metrics, the same
for every training loop (each names its own key metrics)."""

from __future__ import annotations

import math
import sys

from tqdm.auto import tqdm

# (label, metrics key, format) of GRPO's live line
LIVE = (("reward", "reward", "{:.2f}"), ("acc", "rewards/accuracy", "{:.2f}"), ("len", "completion_len", "{:.0f}"),
        ("kl", "kl", "{:.4f}"), ("clip", "clip_frac", "{:.3f}"), ("eval", "eval/accuracy", "{:.3f}"))


def live_line(m: dict, live=LIVE) -> str:
    parts = []
    for label, key, fmt in live:
        v = m.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            parts.append(f"{label}={fmt.format(v)}")
    return " ".join(parts)


class Progress:
    """The bar (`desc`, steps, ETA) with a live line of `live` metrics; the `sticky` ones (an
    evaluation, measured every N steps) stay shown until they are measured again."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "GRPO", live=LIVE,
                 sticky=("eval/accuracy",)):
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                        file=sys.stderr, disable=not enabled, mininterval=0.5)
        self.live, self.sticky, self.last = live, sticky, {}

    def update(self, m: dict) -> None:
        self.last.update({k: m[k] for k in self.sticky if m.get(k) is not None})
        shown = dict(m)
        for k, v in self.last.items():
            if shown.get(k) is None:
                shown[k] = v
        self.bar.set_postfix_str(live_line(shown, self.live), refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
