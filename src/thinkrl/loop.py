"""What every training loop here shares (GRPO, SFT, reward models, on-policy distillation):
the learning-rate schedule and the graceful stop on Ctrl-C / SIGTERM."""

from __future__ import annotations

import math
import signal
import threading


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over `warmup` steps, then constant, linear decay or cosine decay to 0
    at `total` steps (a multiplier of the base learning rate, for LambdaLR)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return max(0.0, 1 - frac)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * frac))
    return 1.0


class StopRequest:
    """The first Ctrl-C (or SIGTERM) lets the current step finish, then a checkpoint is written
    and the run stops; a second Ctrl-C abandons the step at once. `requested` names the signal."""

    def __init__(self, announce: bool = True):
        self.requested: str | None = None
        self.announce = announce
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        if self.announce:
            print(f"\n{self.requested}: finishing this step, then writing a checkpoint (Ctrl-C again to abandon it)")

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
