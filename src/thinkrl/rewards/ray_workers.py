"""Rewards scored by Ray actors (rewards.workers=ray): each reward's batch is split into
contiguous chunks, one per actor, and each actor runs the same code as the local path
(`combine.run_reward`): math verification in its own time-limited worker processes, code in
the sandbox, a user's reward isolated in a worker process, each with its limits and reasons.

A reward that fails in an actor fails the whole batch, with the exception it raised (so the
batch scores `on_error` with the same reason as locally). An actor that dies, or gives no answer
within `timeout_s` plus `GRACE_S` (the inner limits act at `timeout_s` first; the grace covers
an actor's start and a reward stuck where no inner limit reaches, e.g. one holding the GIL in a
thread), is killed and replaced, and the batch fails with a TimeoutError or RuntimeError.

Actors reserve no CPU of the cluster (they mostly wait on their worker processes), so they fit
beside rollout workers that take every CPU; they are shared by every reward set of the process
(`shared_ray_pool`) and killed at exit.
"""

from __future__ import annotations

import atexit
import logging
import pickle
import sys
import time

from ..ray_cluster import acquire_ray, dead_actor_errors, kill_actor, release_ray, split_evenly
from . import REWARDS, get_reward
from .base import Scored

log = logging.getLogger("thinkrl.rewards")

GRACE_S = 30.0  # past timeout_s, before an actor that has not answered is killed
START_TIMEOUT_S = 300.0


class RewardWorker:
    """A Ray actor's state: nothing but the process, its reward imports and worker pools."""

    def ready(self) -> bool:
        return True

    def score(self, run, name: str, completions: list[str], kwargs: dict, timeout_s: float, isolate: bool,
              path: list[str]):
        """("ok", [Scored]) or ("error", the exception `run` (combine.run_reward, sent by reference)
        raised, or a stand-in when it cannot be sent back)."""
        sys.path.extend(p for p in path if p not in sys.path)
        try:
            builtin = name in REWARDS
            # an isolated user's reward is imported in its worker process only, as locally
            fn = get_reward(name, import_timeout_s=timeout_s) if builtin or not isolate else None
            return "ok", [Scored(*s) for s in run(name, fn, builtin, completions, kwargs, timeout_s, isolate)]
        except Exception as e:  # noqa: BLE001  (sent to the caller, which scores on_error)
            try:
                pickle.loads(pickle.dumps(e))
            except Exception:  # noqa: BLE001
                e = RuntimeError(f"{type(e).__name__}: {e}")
            return "error", e


class RayRewardPool:
    def __init__(self, actors: int, address: str = "", num_cpus: int = 0):
        import ray

        if actors < 1:
            raise ValueError(f"rewards.ray_actors={actors}: at least 1")
        self._shared = acquire_ray(address, num_cpus)
        self._closed = False
        self._cls = ray.remote(num_cpus=0, max_restarts=0)(RewardWorker)
        self.actors = [self._cls.remote() for _ in range(actors)]
        try:
            ray.get([a.ready.remote() for a in self.actors], timeout=START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def _replace(self, slot: int, why: str) -> None:
        log.warning("Ray reward worker %d %s; killing it and starting a new one", slot, why)
        kill_actor(self.actors[slot])
        self.actors[slot] = self._cls.remote()

    def run(self, run_reward, name: str, completions: list[str], kwargs: dict, per_row: set[str], timeout_s: float,
            isolate: bool) -> list[Scored]:
        """`run_reward`'s result for the batch (combine.run_reward, a module-level function: the
        actors import it), from chunks scored in the actors; `per_row` are the keys of `kwargs`
        that hold one value per completion (sliced with them)."""
        import ray

        n = len(completions)
        chunks = split_evenly(n, len(self.actors))
        if not chunks:
            return []

        def part(s, e):
            return {k: v[s:e] if k in per_row and isinstance(v, list) and len(v) == n else v
                    for k, v in kwargs.items()}

        path = list(sys.path)
        refs = [self.actors[k].score.remote(run_reward, name, completions[s:e], part(s, e), timeout_s, isolate, path)
                for k, (s, e) in enumerate(chunks)]
        limit = timeout_s + GRACE_S
        t0 = time.monotonic()
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=limit)
        failure: Exception | None = None
        out: list[Scored] = []
        for k, ref in enumerate(refs):
            if ref not in done:
                self._replace(k, f"gave no result for reward {name!r} within {limit:g} s")
                failure = failure or TimeoutError(f"no result within {timeout_s:g} s (+{GRACE_S:g} s grace) in Ray "
                                                  f"reward worker {k}, which was killed and replaced")
                continue
            try:
                status, value = ray.get(ref)
            except dead_actor_errors() as e:
                self._replace(k, f"died scoring reward {name!r} ({type(e).__name__})")
                failure = failure or RuntimeError(f"Ray reward worker {k} died after "
                                                  f"{time.monotonic() - t0:.1f} s (replaced)")
                continue
            if status != "ok":
                failure = failure or value
            else:
                out += value
        if failure is not None:
            raise failure
        return out

    def close(self) -> None:
        import ray

        if self._closed:
            return
        self._closed = True
        if ray.is_initialized():
            for actor in self.actors:
                kill_actor(actor)
        release_ray(self._shared)


_pools: dict[int, RayRewardPool] = {}


def shared_ray_pool(actors: int, address: str = "", num_cpus: int = 0) -> RayRewardPool:
    """The process's pool of `actors` reward actors (started on first use, closed at exit)."""
    import ray

    pool = _pools.get(actors)
    if pool is None or pool._closed or not ray.is_initialized():
        pool = _pools[actors] = RayRewardPool(actors, address, num_cpus)
    return pool


def close_ray_pools() -> None:
    for pool in list(_pools.values()):
        pool.close()
    _pools.clear()


atexit.register(close_ray_pools)
