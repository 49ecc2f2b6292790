"""The Ray session shared by the Ray rollout engine (rollout/ray_engine.py) and the Ray reward
workers (rewards/ray_workers.py), and what both need of Ray. Ray is optional (thinkrl[ray]): it
is imported only inside these functions, and this module imports nothing heavy, so a reward
actor that imports it does not load torch."""

from __future__ import annotations

import logging
import time

_session = {"owned": False, "users": 0}  # the Ray session this process started, and how many use it


def acquire_ray(address: str = "", num_cpus: int = 0) -> bool:
    """Connect this process to Ray: to the cluster at `address` ("auto" or HOST:PORT), else to a
    local cluster started here with `num_cpus` CPUs (0 = all of this machine's), without the
    dashboard and without the actors' output in this process's. Nothing is started when Ray is
    already connected (by the caller or another engine). Returns whether the caller shares a
    session started here (`release_ray` ends it after its last user)."""
    import ray

    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or None, **kwargs)
        _session.update(owned=True, users=0)
    if _session["owned"]:
        _session["users"] += 1
    return _session["owned"]


def release_ray(shared: bool) -> None:
    """The other half of `acquire_ray`: the last user of a session started here shuts it down."""
    import ray

    if not shared or not _session["owned"]:
        return
    _session["users"] -= 1
    if _session["users"] <= 0:
        _session.update(owned=False, users=0)
        if ray.is_initialized():
            ray.shutdown()


def dead_actor_errors() -> tuple[type[BaseException], ...]:
    """What `ray.get` raises for a call on an actor that died, was killed, or cannot be reached."""
    import ray.exceptions as rex

    return (rex.RayActorError,)  # ActorDiedError, ActorUnavailableError, ... derive from it


def kill_actor(actor) -> None:
    """Kill `actor` for good (no restart); one already gone is no error."""
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001  (already gone, or Ray already shut down)
        pass


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of `parts` contiguous chunks of range(n), sizes differing by at most one
    (larger first); empty chunks are left out."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for k in range(parts):
        size = base + (1 if k < extra else 0)
        if size:
            out.append((start, start + size))
        start += size
    return out


def wait_dead(actor, timeout_s: float = 30.0) -> bool:
    """Whether `actor` (one with a `ready` method) is dead within `timeout_s`: for tests and
    benchmarks that kill one and must know it is gone before going on."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ready.remote(), timeout=max(0.1, deadline - time.monotonic()))
        except dead_actor_errors():
            return True
        except ray.exceptions.GetTimeoutError:
            return False
        time.sleep(0.1)
    return False
