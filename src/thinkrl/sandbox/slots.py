"""The dedicated uids (root): each concurrent run gets its own slot, locked within this process
and across processes; and the /proc bookkeeping that finds, kills and sweeps up what a run (its
uid, or its environment marker) left behind."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import tempfile
import threading
import time

log = logging.getLogger("thinkrl.sandbox")


class _UidSlots:
    """Hands out the dedicated uids, one run at a time each: a thread lock within this process
    and an flock on /run/thinkrl-sandbox/<uid>.lock across processes."""

    def __init__(self):
        self._cond = threading.Condition()
        self._held: set[int] = set()
        self._dir: str | None = None

    def _lock_dir(self) -> str | None:
        if self._dir is None:
            for d in ("/run/thinkrl-sandbox", os.path.join(tempfile.gettempdir(), "thinkrl-sandbox-root")):
                try:
                    os.makedirs(d, mode=0o700, exist_ok=True)
                    st = os.lstat(d)
                    if st.st_uid == 0 and not (st.st_mode & 0o077) and os.path.isdir(d) and not os.path.islink(d):
                        self._dir = d
                        break
                except OSError:
                    continue
            else:
                self._dir = ""
                log.warning("sandbox: no private lock directory; uid slots are exclusive within this process only")
        return self._dir or None

    def acquire(self, uids: tuple[int, ...]) -> tuple[int, int | None]:
        d = self._lock_dir()
        with self._cond:
            while True:
                for uid in uids:
                    if uid in self._held:
                        continue
                    fd = None
                    if d:
                        fd = os.open(os.path.join(d, f"{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        except OSError:
                            os.close(fd)
                            continue
                    self._held.add(uid)
                    return uid, fd
                self._cond.wait(0.05)

    def release(self, uid: int, fd: int | None) -> None:
        with self._cond:
            if fd is not None:
                os.close(fd)
            self._held.discard(uid)
            self._cond.notify()


_slots = _UidSlots()


# ---------------------------------------------------------------- what a run left behind


_STATUS_KEYS = ("State", "Uid", "Threads")


def _proc_status(pid: str) -> dict[str, str] | None:
    """State, Uid and Threads lines of /proc/<pid>/status."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    out = {}
    for key in _STATUS_KEYS:
        i = text.find("\n" + key + ":")
        if i >= 0:
            j = text.find("\n", i + 1)
            out[key] = text[i + len(key) + 2: j if j >= 0 else None].strip()
    return out


def _pids_where(pred) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            st = _proc_status(name)
            if st is not None and not st.get("State", "").startswith(("Z", "X")) and pred(name, st):
                out.append(int(name))
    return out


def processes_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real, effective or saved uid is `uid`."""
    return _pids_where(lambda _, st: str(uid) in st.get("Uid", "").split()[:3])


def _has_marker(pid: str, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def _kill_all(pred, rounds: int = 100) -> None:
    for i in range(rounds):
        pids = pred()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002 * min(i + 1, 10))
    log.warning("sandbox: processes survived %d kill rounds", rounds)


def _user_tasks() -> int:
    """Threads of all processes of this real uid (what RLIMIT_NPROC counts)."""
    me = str(os.getuid())
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _proc_status(name)
            if st is not None and st.get("Uid", "").split()[:1] == [me]:
                n += int(st.get("Threads", "1") or 1)
    return n


def _sweep_shared_dirs(uid: int) -> None:
    """Remove what a dedicated uid left in the world-writable directories."""
    for d in ("/tmp", "/var/tmp", "/dev/shm", tempfile.gettempdir()):
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                if e.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    os.unlink(e.path)
            except OSError:
                pass



def _reset_after_fork() -> None:
    """In a forked child the parent's slot locks may be held."""
    global _slots
    _slots = _UidSlots()


os.register_at_fork(after_in_child=_reset_after_fork)
