"""`SandboxPool`: many sandboxed runs (single runs, and judge/program pairs) at once, one per
worker thread; and `default_pool()`, the process-wide pool."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable

from .pair import PairJob, run_pair
from .records import Execution, Job, Limits
from .run import run_python


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class SandboxPool:
    """Runs many programs at once: `workers` threads (default: the cores), each driving one
    sandboxed process at a time. As root each concurrent run has its own uid slot."""

    def __init__(self, workers: int | None = None):
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers or _cores()
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")

    def submit(self, code: str, stdin: str | bytes = "", limits: Limits | None = None, *,
               audit_hook: bool = True) -> Future:
        return self._executor.submit(run_python, code, stdin, limits, audit_hook=audit_hook)

    def submit_pair(self, job: PairJob) -> Future:
        """A judge/program pair (`sandbox.pair`); its result is (judge's Execution, program's)."""
        return self._executor.submit(run_pair, job.judge, job.judge_input, job.program, job.limits,
                                     audit_hook=job.audit_hook)

    def map(self, jobs: Iterable[Job | PairJob | str]) -> list[Execution | tuple[Execution, Execution]]:
        """Run every job (a `Job`, or just the code; or a `PairJob`, whose result is a pair of
        Executions), in parallel; results in order."""
        futures = []
        for job in jobs:
            if isinstance(job, PairJob):
                futures.append(self.submit_pair(job))
                continue
            job = Job(job) if isinstance(job, str) else Job(*job)
            futures.append(self.submit(job.code, job.stdin, job.limits, audit_hook=job.audit_hook))
        return [f.result() for f in futures]

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_default_pool: SandboxPool | None = None
_default_pool_lock = threading.Lock()


def default_pool() -> SandboxPool:
    """A process-wide pool sized to the cores (created on first use)."""
    global _default_pool
    with _default_pool_lock:
        if _default_pool is None:
            _default_pool = SandboxPool()
        return _default_pool



def _reset_after_fork() -> None:
    """In a forked child the parent's pool threads are gone and its lock may be held."""
    global _default_pool, _default_pool_lock
    _default_pool, _default_pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
