"""Peak memory of a whole process tree (a process and all its descendants), sampled from /proc.

`TreeSampler(pid).start()` starts a thread that, every `interval` seconds, finds the
descendants of `pid` (children, grandchildren, ...) from the parent pid in /proc/<pid>/stat and
sums the RSS of the root and all of them: resident pages of /proc/<pid>/statm (the number
VmRSS gives). A page that two processes share (a forked child's copy-on-write pages, a shared
library) counts once per process, so the sum can exceed the memory the tree really holds: it
errs against a framework that runs workers. `stop()` returns the maximum and when it happened.
A spike that starts and ends between two samples is missed, and so is a process that lives
less than one interval. Linux only.

PSS (smaps_rollup) would split shared pages fairly, but the kernel walks the page tables to
give it: about 25 ms for a 1 GB process, as long as the interval itself, so it is not sampled.

Finding descendants reads the stat file of processes whose pid is above the root's (new
processes get higher pids until the counter wraps), and of every process once a second (a
wrapped counter, a pid lower than the root's): about 0.1 ms per sample instead of a few ms for
a full scan on a machine with a hundred processes.
"""

from __future__ import annotations

import os
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 2**20


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:  # gone
        return None
    return int(raw[raw.rindex(b")") + 2:].split()[1])  # the name in (...) may hold spaces


def descendants(root: int, full: bool = True) -> list[int]:
    """The pids below `root` in the process tree (not root itself). full=False reads only the
    processes with a pid above root's (see the module's note)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (full or int(name) > root):
            ppid = _ppid(int(name))
            if ppid is not None:
                children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for kid in children.get(todo.pop(), ()):
            out.append(kid)
            todo.append(kid)
    return out


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class TreeSampler:
    def __init__(self, pid: int, interval: float = 0.025, full_scan_every: float = 1.0):
        self.pid, self.interval, self.full_every = pid, interval, full_scan_every
        self.peak_rss, self.peak_rss_at = 0, 0.0
        self.processes_at_peak = self.most_processes = self.samples = 0
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cpu = 0.0

    def start(self) -> TreeSampler:
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def sample(self, full: bool) -> None:
        pids = [self.pid, *descendants(self.pid, full)]
        rss = sum(rss_bytes(p) for p in pids)
        now = time.perf_counter() - self.t0
        self.samples += 1
        self.seen.update(pids)
        self.most_processes = max(self.most_processes, len(pids))
        if rss > self.peak_rss:
            self.peak_rss, self.peak_rss_at, self.processes_at_peak = rss, now, len(pids)

    def _run(self) -> None:
        cpu0, last_full = time.thread_time(), -1e9
        while not self._stop.is_set():
            t = time.perf_counter()
            full = t - last_full >= self.full_every
            last_full = t if full else last_full
            self.sample(full)
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - t)))
        self._cpu = time.thread_time() - cpu0

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        wall = time.perf_counter() - self.t0
        return {"tree_peak_rss_mb": self.peak_rss / MB, "tree_peak_rss_at_s": self.peak_rss_at,
               "tree_processes_at_peak": self.processes_at_peak, "tree_most_processes": self.most_processes,
               "tree_processes_seen": len(self.seen), "samples": self.samples,
               "mean_interval_s": wall / self.samples if self.samples else None,
               "sampler_cpu_s": self._cpu}
