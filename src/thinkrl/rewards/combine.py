"""The rewards of a run: named rewards, each with its settings, weighted and summed, each
logged on its own.

A reward that raises, returns the wrong number of values, or runs past `timeout_s` is
logged with its input and scores `on_error` (default 0; None = not applicable) for that
batch: it never kills the run. The built-in rewards bound their own work (math verification
in time-limited workers, code in the sandbox). A user's reward, named by import path, runs
in a worker process of its own when `isolate` is on (the default), so that a hang is killed
at the limit; with `isolate` off it runs in a daemon thread of the training process and a
hang is abandoned at the limit (its thread cannot be killed, but cannot keep the process
alive either). A user's module is imported within `timeout_s` too (`rewards.user`), and each
reward's settings are checked at start (`rewards.settings`): a misspelt or impossible one is
a ValueError, not a run that scores `on_error` throughout.

None ("not applicable") adds nothing to the total and is left out of that reward's mean. A
NaN or inf value is counted in `nonfinite` (the trainer skips such a step) and kept as None.
"""

from __future__ import annotations

import logging
import math
import sys
import threading

from .base import Scored, scores_of

log = logging.getLogger("thinkrl.rewards")


def _in_daemon_thread(name: str, timeout_s: float, fn, *args, **kwargs):
    """fn(*args, **kwargs) in a daemon thread, waited for `timeout_s`: past it the thread is
    abandoned, and being a daemon it cannot keep the process alive at exit (a
    ThreadPoolExecutor's worker would: the interpreter joins it before exiting)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller)
            box["error"] = e

    t = threading.Thread(target=target, name=f"reward-{name}", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise TimeoutError(f"no result within {timeout_s:g} s (its thread is abandoned)")
    if "error" in box:  # a SystemExit in the reward must not end the caller: it is a failed batch
        e = box["error"]
        raise e if isinstance(e, Exception) else RuntimeError(f"{type(e).__name__}: {e}")
    return box["value"]


def _call_reward(name: str, completions: list[str], kwargs: dict, path: list[str] | None = None, call=None):
    """Runs in a reward worker: `call(reward, completions, **kwargs)` (default `scores_of`: the
    values with reasons) for the reward by name or import path. `path` is the caller's import
    path now (the worker may have started before the caller extended it)."""
    from . import get_reward

    sys.path.extend(p for p in path or [] if p not in sys.path)
    return (call or scores_of)(get_reward(name), completions, **kwargs)


def run_reward(name: str, fn, builtin: bool, completions: list[str], kwargs: dict, timeout_s: float,
               isolate: bool, call=scores_of):
    """`call(fn, completions, **kwargs)` for reward `name`: directly for a registered reward;
    for a user's, in a worker process (`isolate`) or a daemon thread, within `timeout_s`.
    `call` must be a module-level function (it is sent to the worker by reference)."""
    if builtin:
        return call(fn, completions, **kwargs)
    if isolate:
        from .pool import shared_pool

        [outcome] = shared_pool(None, 1).map(_call_reward, [(name, completions, kwargs, list(sys.path), call)],
                                             timeout_s)
        if outcome.status != "ok":
            raise RuntimeError(outcome.value)
        return outcome.value
    return _in_daemon_thread(name, timeout_s, call, fn, completions, **kwargs)


class WeightedRewards:
    """`workers="ray"` scores each reward's batch in `ray_actors` Ray actors (rewards/ray_workers.py:
    the same code, limits and reasons), on the Ray session of the process or one started here
    (`ray_address`, `ray_num_cpus` as the ray section's)."""

    def __init__(self, weights: dict[str, float], params: dict[str, dict] | None = None,
                 timeout_s: float = 60.0, on_error: float | None = 0.0, isolate: bool = True,
                 workers: str = "local", ray_actors: int = 2, ray_address: str = "", ray_num_cpus: int = 0):
        from . import REWARDS, get_reward
        from .settings import check_settings

        self.weights = dict(weights)
        self.params = {name: dict((params or {}).get(name) or {}) for name in weights}
        self.fns = {name: get_reward(name, import_timeout_s=timeout_s) for name in weights}
        self.builtin = {name: name in REWARDS for name in weights}
        problems = [p for name in weights for p in check_settings(name, self.fns[name], self.params[name],
                                                                  self.builtin[name])]
        if problems:
            raise ValueError("; ".join(problems))
        self.timeout_s, self.on_error, self.isolate = timeout_s, on_error, isolate
        self.errors = {name: 0 for name in weights}  # batches that failed, per reward
        self.nonfinite = {name: 0 for name in weights}  # NaN/inf values in the last call, per reward
        if workers not in ("local", "ray"):
            raise ValueError(f"rewards.workers {workers!r}: use local or ray")
        self.ray_pool = None
        if workers == "ray":
            from .ray_workers import shared_ray_pool  # defers Ray, an optional dependency

            self.ray_pool = shared_ray_pool(ray_actors, ray_address, ray_num_cpus)

    def warm_up(self) -> None:
        """Let each built-in reward with a `warm_up(**settings)` start what it will need (its
        worker processes) now, in the background, rather than at the first batch that needs it."""
        if self.ray_pool is not None:  # the Ray actors start their own
            return
        for name, fn in self.fns.items():
            hook = getattr(fn, "warm_up", None) if self.builtin[name] else None
            if hook is not None:
                hook(**self.params[name])

    def _run(self, name: str, completions: list[str], kwargs: dict, per_row: set[str] = frozenset()) -> list[Scored]:
        if self.ray_pool is not None:
            return self.ray_pool.run(run_reward, name, completions, kwargs, per_row, self.timeout_s, self.isolate)
        return run_reward(name, self.fns[name], self.builtin[name], completions, kwargs, self.timeout_s, self.isolate)

    def scores(self, completions: list[str], rows: list[dict], prompts: list[str] | None = None,
               completion_lengths: list[int] | None = None) -> dict[str, list[Scored]]:
        """{name: one Scored(value, reason) per completion}; failures scored `on_error`."""
        keys = dict.fromkeys(k for r in rows for k in r)  # every column any row has, in order
        columns = {k: [r.get(k) for r in rows] for k in keys}
        per: dict[str, list[Scored]] = {}
        for name in self.fns:
            kwargs = dict(columns, prompts=prompts, **self.params[name])
            if completion_lengths is not None:
                kwargs["completion_lengths"] = completion_lengths
            per_row = ({*columns, "prompts", "completion_lengths"}) - set(self.params[name])  # one value per completion
            try:
                scored = self._run(name, completions, kwargs, per_row)
                if len(scored) != len(completions):
                    raise ValueError(f"returned {len(scored)} values for {len(completions)} completions")
            except Exception as e:  # a broken reward must not end the run
                self.errors[name] += 1
                log.warning("reward %r failed (%s: %s) on a batch of %d; scoring %s. First input: completion %r, "
                            "row %r", name, type(e).__name__, e, len(completions), self.on_error,
                            completions[0][:200] if completions else "", rows[0] if rows else None)
                scored = [Scored(self.on_error, f"reward failed: {type(e).__name__}: {e}")] * len(completions)
            finite = [s.value is None or math.isfinite(float(s.value)) for s in scored]
            self.nonfinite[name] = finite.count(False)
            per[name] = [s if ok else Scored(None, f"non-finite value {s.value}") for s, ok in zip(scored, finite)]
        return per

    def __call__(self, completions: list[str], rows: list[dict], prompts: list[str] | None = None,
                 completion_lengths: list[int] | None = None):
        """Returns (total [N] floats, {name: [N] float | None})."""
        per = {name: [None if s.value is None else float(s.value) for s in scored]
               for name, scored in self.scores(completions, rows, prompts, completion_lengths).items()}
        total = [sum(self.weights[n] * (per[n][i] or 0.0) for n in per) for i in range(len(completions))]
        return total, per


class TypedRewards:
    """R1 stage 4, RL for all scenarios: each row's type (a dataset column, `data.type_field`)
    picks its rewards, e.g. rule rewards for `reasoning` rows and reward models for `general`
    rows. Rows of a type not in `by_type` (or without the column) take `default`.

    Behaves like `WeightedRewards`: (total, {key: values}) with the default rewards under their
    own names and each type's under `type/name`, None for the rows of other types, so every
    reward is logged per type."""

    def __init__(self, default: dict[str, float], by_type: dict[str, dict[str, float]], type_field: str = "type",
                 params: dict[str, dict] | None = None, timeout_s: float = 60.0, on_error: float | None = 0.0,
                 isolate: bool = True, **workers):
        def make(weights):  # `workers`: WeightedRewards' workers, ray_actors, ... (one Ray pool for all)
            used = {n: p for n, p in (params or {}).items() if n in weights}
            return WeightedRewards(weights, used, timeout_s, on_error, isolate, **workers)

        self.type_field = type_field
        self.sets = {None: make(default), **{t: make(w) for t, w in by_type.items()}}
        self.errors = {self._key(t, n): 0 for t, s in self.sets.items() for n in s.weights}
        self.nonfinite = dict.fromkeys(self.errors, 0)

    @staticmethod
    def _key(kind, name: str) -> str:
        return name if kind is None else f"{kind}/{name}"

    def warm_up(self) -> None:
        for rewards in self.sets.values():
            rewards.warm_up()

    def kind_of(self, row: dict):
        kind = row.get(self.type_field)
        return kind if kind in self.sets else None

    def __call__(self, completions: list[str], rows: list[dict], prompts: list[str] | None = None,
                 completion_lengths: list[int] | None = None):
        n = len(completions)
        total = [0.0] * n
        per = {k: [None] * n for k in self.errors}
        kinds = [self.kind_of(r) for r in rows]
        self.nonfinite = dict.fromkeys(self.errors, 0)
        for kind, rewards in self.sets.items():
            idx = [i for i in range(n) if kinds[i] == kind]
            if not idx:
                continue
            pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
            sub_total, sub = rewards([completions[i] for i in idx], [rows[i] for i in idx], pick(prompts),
                                     pick(completion_lengths))
            for j, i in enumerate(idx):
                total[i] = sub_total[j]
            for name, values in sub.items():
                key = self._key(kind, name)
                for j, i in enumerate(idx):
                    per[key][i] = values[j]
                self.errors[key] = rewards.errors[name]
                self.nonfinite[key] = rewards.nonfinite[name]
        return total, per
