"""What every training loop here shares (GRPO, SFT, reward models, on-policy distillation):
the learning-rate schedule, the graceful stop on Ctrl-C / SIGTERM, and torch's thread count
given back as it was when a piece of work ends."""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading


@contextlib.contextmanager
def threads_restored():
    """Whatever the work inside sets torch's thread count to, it is the caller's again after
    (a pipeline runs its stages in one process: one stage's `threads` must not leak into the
    next)."""
    import torch  # deferred: this module is imported by code that never needs torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_threads(n: int) -> int:
    """Set torch's thread count to `n` (0: leave it); returns the count before, to give back."""
    import torch  # deferred: this module is imported by code that never needs torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    return before


def restoring_threads(fn):
    """`fn`, run inside `threads_restored()`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threads_restored():
            return fn(*args, **kwargs)
    return wrapper


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


def nonfinite_cause(loss: float, grad_norm: float) -> str:
    """Why a step must be skipped ("" when its loss and gradient norm are finite)."""
    if not math.isfinite(loss):
        return f"the loss is {loss}"
    return "" if math.isfinite(grad_norm) else f"the gradient norm is {grad_norm}"


class BadSteps:
    """The one NaN/inf policy of every training loop (GRPO, SFT, reward models, on-policy
    distillation). A step whose loss, gradient (or, in GRPO, reward) is not finite is skipped:
    the gradients are zeroed, no optimizer step is taken, and the learning-rate schedule
    advances as for a taken step (it counts the steps the run meant to take). `record` each
    step's cause ("" for a taken step); once `exhausted` (`limit` skipped in a row) the run
    stops with `message`: the cause of the last one and the likely fix. `lr`, `clip` and
    `setting` (the limit's) name the run's own settings."""

    def __init__(self, limit: int, lr: str = "optim.lr", clip: str = "optim.max_grad_norm",
                 setting: str = "train.max_bad_steps"):
        self.limit, self.lr, self.clip, self.setting = limit, lr, clip, setting
        self.count, self.cause = 0, ""  # consecutive skipped steps; why the last one was skipped

    def record(self, cause: str) -> None:
        self.count = self.count + 1 if cause else 0
        self.cause = cause or self.cause

    @property
    def exhausted(self) -> bool:
        return self.count >= self.limit

    def message(self, newest: str | None) -> str:
        """`newest`: the newest checkpoint (or why there is none); None where the run keeps none."""
        hint = ("fix or remove that reward (a reward must return finite numbers)" if self.cause.startswith("reward")
                else f"the learning rate may be too high ({self.lr}), or the data or model produce overflow; "
                     f"try a lower {self.lr} or {self.clip}")
        kept = f"the newest checkpoint is {newest}" if newest is not None else "nothing was saved"
        return (f"stopped: {self.count} consecutive steps were skipped ({self.setting}={self.limit}); the last "
                f"because {self.cause}. Likely cause: {hint}. The model was not updated by the skipped steps; {kept}")
