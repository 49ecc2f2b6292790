"""Worker processes with hard per-task time limits, for reward work that may hang.

math-verify's own time limits use SIGALRM: they work only on a process's main thread, and a
C-level computation in sympy (a power tower like 9^9^9^9) can ignore them. A pathological
answer must never stall or crash training, so verification runs here instead: in persistent
worker processes (fresh interpreters started once, so they never inherit the trainer's
threads or re-run the caller's script),
each task with a wall-clock limit. A task that runs past its limit has its worker killed and
replaced; it comes back as `Outcome("timeout")`. A worker that dies (a segfault, the memory
limit) comes back as `Outcome("error")`. The caller decides what a failed task scores.

Workers die with the process that started them, even one killed by SIGKILL mid-task
(`_die_with_parent`). Each worker has an address-space limit (`memory_mb`), so a runaway
computation fails with MemoryError in the worker instead of swapping the host.

Tasks are a module-level function and its arguments (pickled by reference, as
multiprocessing does). Workers start when first needed and wait for their warm-up import
(`warmup`, e.g. "math_verify") before any task's clock starts; `prestart` launches them
earlier without waiting, so that their start-up (about 0.8 s for math-verify) overlaps the
caller's own (a trainer loading its model) instead of stalling the first batch that needs one.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, NamedTuple


class Outcome(NamedTuple):
    status: str  # "ok" | "error" | "timeout"
    value: Any = None  # the result for "ok"; "Type: message" for "error"


def _die_with_parent(parent: int, deathsig: bool) -> None:
    """A worker must not outlive the process that started it (a `kill -9` of the trainer while
    a task hangs would leave it running, adopted by init). The kernel kills it when its parent
    dies (Linux's PR_SET_PDEATHSIG, asked for only when the parent started it from its main
    thread: the signal follows the starting thread, not the process); and a watchdog thread
    ends it once its parent process is gone, wherever that is unavailable."""
    if deathsig and sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the above took effect
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _serve(fd: int, warmup: str, memory_mb: int, parent: int = 0, deathsig: bool = False):
    """A worker's loop: run (fn, args) tasks until told to stop (None) or the socket closes
    (the parent is gone); it dies with `parent` (the starting process's pid) in any case."""
    if parent:
        _die_with_parent(parent, deathsig)
    conn = Connection(fd)
    if memory_mb:
        try:
            import resource

            limit = memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass  # not on this platform: the wall-clock limit still holds
    if warmup:
        __import__(warmup)
    conn.send("ready")
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if task is None:
            return
        fn, args = task
        try:
            result = Outcome("ok", fn(*args))
        except BaseException as e:  # noqa: BLE001  (math-verify's timeout is a BaseException)
            result = Outcome("error", f"{type(e).__name__}: {e}")
        try:
            conn.send(result)
        except Exception as e:  # an unpicklable result
            conn.send(Outcome("error", f"result could not be sent back: {type(e).__name__}: {e}"))


class _Worker:
    """A fresh interpreter (not multiprocessing's spawn, which re-runs the caller's main
    script in the child), talking over a socket pair, importing what the parent can."""

    def __init__(self, warmup: str | None, memory_mb: int):
        ours, theirs = socket.socketpair()
        code = ("import sys; from thinkrl.rewards.pool import _serve; "
                "_serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == '1')")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        deathsig = threading.current_thread() is threading.main_thread()
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno()), warmup or "", str(memory_mb),
                                      str(os.getpid()), "1" if deathsig else "0"],
                                     pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self.conn = Connection(ours.detach())

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.conn.close()


class WorkerPool:
    """`workers` processes running `map(fn, args_list, timeout_s)` with a hard limit per task."""

    def __init__(self, workers: int | None = None, warmup: str | None = None, memory_mb: int = 4096,
                 start_timeout_s: float = 120.0):
        self.size = max(1, workers or min(4, os.cpu_count() or 1))
        self.warmup, self.memory_mb, self.start_timeout_s = warmup, memory_mb, start_timeout_s
        self._idle: list[_Worker] = []
        self._starting: list[_Worker] = []  # launched by prestart, not yet known to be ready
        self._lock = threading.Lock()  # one map at a time; callers on other threads wait
        self.replaced = 0  # workers killed for running past a limit or dying

    def prestart(self, n: int = 1) -> None:
        """Launch workers now, up to n in all, without waiting for their warm-up import; the
        first `map` that needs workers takes these (and waits for them if they are not ready)."""
        with self._lock:
            more = min(n, self.size) - len(self._idle) - len(self._starting)
            self._starting.extend(_Worker(self.warmup, self.memory_mb) for _ in range(max(0, more)))

    def _start(self, n: int = 1) -> None:
        """Start n workers (in parallel; prestarted ones first) and wait until each has done its
        warm-up import."""
        new, self._starting = self._starting[:n], self._starting[n:]
        new += [_Worker(self.warmup, self.memory_mb) for _ in range(n - len(new))]
        for w in new:
            try:
                msg = w.conn.recv() if w.conn.poll(self.start_timeout_s) else None
            except (EOFError, OSError):
                msg = None
            if msg != "ready":
                for x in new:
                    x.kill()
                raise RuntimeError(f"a reward worker did not start within {self.start_timeout_s:.0f} s "
                                   f"(exit code {w.proc.poll()}); is thinkrl importable by {sys.executable}?")
        self._idle.extend(new)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self.replaced += 1
        self._start()

    def map(self, fn: Callable, args_list: list[tuple], timeout_s: float) -> list[Outcome]:
        """Run fn(*args) for each args, in parallel over the workers, each with `timeout_s` of
        wall clock. Results in input order."""
        out: list[Outcome | None] = [None] * len(args_list)
        with self._lock:
            if len(self._idle) < min(self.size, len(args_list)):
                self._start(min(self.size, len(args_list)) - len(self._idle))
            pending = list(range(len(args_list)))[::-1]
            busy: dict[Any, tuple[_Worker, int, float]] = {}  # conn -> (worker, index, deadline)
            while pending or busy:
                while pending and self._idle:
                    w, i = self._idle.pop(), pending.pop()
                    try:
                        w.conn.send((fn, args_list[i]))
                    except Exception as e:  # unpicklable arguments, or a dead worker
                        out[i] = Outcome("error", f"task could not be sent: {type(e).__name__}: {e}")
                        self._replace(w)
                        continue
                    busy[w.conn] = (w, i, time.monotonic() + timeout_s)
                if not busy:
                    continue
                soonest = min(d for _, _, d in busy.values())
                for conn in wait(list(busy), timeout=max(0.0, soonest - time.monotonic())):
                    w, i, _ = busy.pop(conn)
                    try:
                        out[i] = conn.recv()
                        self._idle.append(w)
                    except (EOFError, OSError):
                        try:
                            code = w.proc.wait(timeout=2)
                        except subprocess.TimeoutExpired:
                            code = None
                        out[i] = Outcome("error", f"the worker died (exit code {code})")
                        self._replace(w)
                now = time.monotonic()
                for conn, (w, i, deadline) in list(busy.items()):
                    if now >= deadline:
                        del busy[conn]
                        out[i] = Outcome("timeout", f"no result within {timeout_s:g} s")
                        self._replace(w)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            for w in self._idle + self._starting:
                try:
                    w.conn.send(None)
                except Exception:
                    pass
                w.kill()
            self._idle.clear()
            self._starting.clear()


_POOLS: dict[tuple, WorkerPool] = {}


def shared_pool(warmup: str | None = None, workers: int | None = None) -> WorkerPool:
    """One pool per (warm-up import, size) for the whole process, closed at exit."""
    key = (warmup, workers)
    if key not in _POOLS:
        _POOLS[key] = WorkerPool(workers=workers, warmup=warmup)
    return _POOLS[key]


@atexit.register
def _close_pools():
    for p in _POOLS.values():
        p.close()
