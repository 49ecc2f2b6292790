"""The parent side of one sandboxed run under given layers (`_execute`; `run.run_python` runs
with this machine's). It prepares the private directory and the
scrubbed environment, takes a uid slot (root), starts the bootstrap with the run's layers and
rlimits, feeds stdin, captures output under the wall clock and the output cap, kills everything
the run started, cleans up, and classifies the outcome as an `Execution`."""

from __future__ import annotations

import logging
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import slots
from .bootstrap import _BOOTSTRAP, _MARKER, _REFUSED_PREFIX, _SETUP_EXIT
from .layers import CLONE_NEWNS, Isolation
from .records import (DISK_LIMIT, ERROR, KILLED, MEMORY, OK, OUTPUT_LIMIT, REFUSED, SANDBOX_ERROR, TIMEOUT,
                      Execution, Limits)
from .slots import _has_marker, _kill_all, _pids_where, _sweep_shared_dirs, _user_tasks, processes_of_uid

log = logging.getLogger("thinkrl.sandbox")

_PATH = "/usr/local/bin:/usr/bin:/bin"


def _rlimits(limits: Limits, iso: Isolation) -> list[tuple[str, int, int]]:
    cpu = max(1, math.ceil(limits.cpu_s))  # SIGXCPU at the limit, SIGKILL a second later
    nproc = limits.max_processes + (2 if iso.pid_namespace else 0)  # + the waiter and init
    if not (iso.dedicated_uids or iso.user_namespace):
        nproc += _user_tasks()  # RLIMIT_NPROC counts all of this user's tasks
    mem = limits.memory_mb * 2 ** 20
    return [("RLIMIT_CPU", cpu, cpu + 1), ("RLIMIT_AS", mem, mem), ("RLIMIT_NPROC", nproc, nproc),
            ("RLIMIT_FSIZE", limits.max_file_mb * 2 ** 20, limits.max_file_mb * 2 ** 20),
            ("RLIMIT_NOFILE", 256, 256), ("RLIMIT_CORE", 0, 0)]


def _execute(code: str, stdin: str | bytes, limits: Limits, *, audit_hook: bool, iso: Isolation,
             extra_env: dict | None = None) -> Execution:
    run = _start(code, limits, audit_hook=audit_hook, iso=iso, extra_env=extra_env)
    if isinstance(run, Execution):
        return run
    data = stdin.encode("utf-8", "surrogateescape") if isinstance(stdin, str) else bytes(stdin)
    drove = None
    try:
        drove = _drive(run.proc, data, limits, run.start, disk_dir=_polled_dir(run.iso, run.tmp))
    finally:
        ex = _finish(run, drove)
    return ex


class _Run:
    """A started run: the bootstrap's process and what `_finish` releases."""

    def __init__(self, proc, uid, lock_fd, tmp, started_r, run_id, start, limits, iso):
        self.proc, self.uid, self.lock_fd, self.tmp, self.started_r = proc, uid, lock_fd, tmp, started_r
        self.run_id, self.start, self.limits, self.iso = run_id, start, limits, iso


def _start(code: str, limits: Limits, *, audit_hook: bool, iso: Isolation, extra_env: dict | None = None,
           slot: tuple[int, int | None] | None = None, start: float | None = None) -> _Run | Execution:
    """Prepare the private directory, take a uid slot (or use `slot`, which it then owns), spawn
    the bootstrap with its stdin/stdout/stderr on pipes. Returns the `_Run` (end it with
    `_finish`), or a sandbox_error `Execution` when it could not start (all released)."""
    start = time.monotonic() if start is None else start
    uid = fd = tmp = started_r = None
    if iso.dedicated_uids:
        uid, fd = slot if slot is not None else slots._slots.acquire(iso.uids)
    try:
        try:
            tmp = os.path.realpath(tempfile.mkdtemp(prefix="thinkrl-sandbox-"))
            with open(os.path.join(tmp, "main.py"), "w", encoding="utf-8", errors="surrogatepass") as f:
                f.write(code)
            if uid is not None:
                os.chown(tmp, uid, uid)
                os.chown(os.path.join(tmp, "main.py"), uid, uid)
        except OSError as e:
            return Execution(SANDBOX_ERROR, None, "", "", f"sandbox: cannot prepare the run directory: {e}",
                             time.monotonic() - start)
        run_id = secrets.token_hex(8)
        env = {"PATH": _PATH, "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8", "THINKRL_SANDBOX_RUN": run_id,
               **(extra_env or {})}
        # the bootstrap writes one byte here just before the program starts: a failure before
        # it is the sandbox's, and no program can fake one (it runs only after the byte)
        started_r, started_w = os.pipe()
        cfg = {"tmp": tmp, "uid": uid, "unshare": iso.unshare_flags, "landlock": iso.landlock_abi,
               "hook": audit_hook, "rlimits": _rlimits(limits, iso), "started_fd": started_w,
               "marker": _MARKER, "setup_exit": _SETUP_EXIT, "disk": limits.max_disk_mb * 2 ** 20,
               "proc": iso.private_proc}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", "-X", "utf8", "-c", _BOOTSTRAP, repr(cfg)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp, env=env,
                start_new_session=True, close_fds=True, pass_fds=(started_w,))
        except OSError as e:
            return Execution(SANDBOX_ERROR, None, "", "", f"sandbox: cannot start the interpreter: {e}",
                             time.monotonic() - start)
        finally:
            os.close(started_w)
        run = _Run(proc, uid, fd, tmp, started_r, run_id, start, limits, iso)
        uid = tmp = started_r = None  # the run owns them now
        return run
    finally:  # only where no run was made
        if started_r is not None:
            os.close(started_r)
        if tmp is not None:
            _rmtree(tmp)
        if uid is not None:
            _sweep_shared_dirs(uid)
            slots._slots.release(uid, fd)


def _finish(run: _Run, drove: tuple[bytes, bytes, str | None] | None) -> Execution:
    """End a started run: kill everything it started, sweep, classify (`drove` is what its
    driver collected: (stdout, stderr, verdict), or None when the driver failed), remove its
    directory and release its slot."""
    try:
        try:
            _cleanup(run.proc, run.uid, None if run.iso.contains_processes
                     else f"THINKRL_SANDBOX_RUN={run.run_id}".encode())
            os.set_blocking(run.started_r, False)
            try:
                started = os.read(run.started_r, 1) == b"1"
            except BlockingIOError:
                started = False
        finally:
            os.close(run.started_r)
        out, err, verdict = drove if drove is not None else (b"", b"", None)
        return _classify(run.proc.returncode, out, err, verdict, run.limits, time.monotonic() - run.start, started)
    finally:
        _rmtree(run.tmp)
        if run.uid is not None:
            _sweep_shared_dirs(run.uid)
            slots._slots.release(run.uid, run.lock_fd)


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (its pid, and so its process group,
    stays reserved until we kill the group)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _rmtree(path: str) -> None:
    """Remove the run's directory, also where the program took permissions off its own
    subdirectories (no chmod needed as root)."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return
    stack = [path]
    while stack:  # iteratively: the program may have nested directories very deep
        d = stack.pop()
        try:
            os.chmod(d, 0o700)
            stack.extend(e.path for e in os.scandir(d) if e.is_dir(follow_symlinks=False))
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        log.warning("sandbox: could not remove %s", path)



def _polled_dir(iso: Isolation, tmp: str) -> str | None:
    """The run directory where the parent must poll the disk quota (no tmpfs bounds it), else None."""
    return None if iso.unshare_flags & CLONE_NEWNS else tmp


DISK_POLL_S = 0.002  # the shortest interval between two polls of a run directory's usage


def next_disk_poll(scan_started: float) -> float:
    """When to poll again: DISK_POLL_S after a scan, or later when scans are slow (they then
    take a third of the time at most)."""
    return time.monotonic() + max(DISK_POLL_S, 2 * (time.monotonic() - scan_started))


def disk_usage_exceeded(path: str, limit: int) -> bool:
    """Whether what lies under `path` takes more than `limit` bytes (allocated blocks, each file
    or directory counted as at least 4 KiB). A directory that cannot be read counts as over."""
    total, stack = 0, [path]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    total += max(st.st_blocks * 512, 4096)
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
        except FileNotFoundError:
            continue
        except OSError:
            return True
        if total > limit:
            return True
    return False


def read_chunk(fd: int) -> bytes | None:
    """Up to 64 KiB from a child's non-blocking pipe: None when nothing is there yet, b"" when
    it is closed (or broken)."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _drive(proc: subprocess.Popen, data: bytes, limits: Limits, start: float, disk_dir: str | None = None):
    """Feed stdin, collect stdout/stderr, enforce the wall clock and the output cap, and (where
    `disk_dir` is given: no tmpfs bounds it) the disk quota by polling. Returns (stdout, stderr,
    verdict) with verdict None, TIMEOUT, OUTPUT_LIMIT or DISK_LIMIT."""
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    next_poll = 0.0
    total, cap = 0, limits.max_output_bytes
    deadline = start + limits.wall_s
    verdict = None
    exited_at = None
    pending = memoryview(data)
    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        while verdict is None:
            now = time.monotonic()
            if exited_at is None and _exited(proc.pid):
                exited_at = now
            readers = [k for k in sel.get_map().values() if k.events & selectors.EVENT_READ]
            if exited_at is not None and (not readers or now - exited_at > 0.1):
                break  # done; whoever still holds the pipes is killed with the group
            if now >= deadline:
                verdict = TIMEOUT
                break
            if disk_dir is not None and exited_at is None and now >= next_poll:
                if disk_usage_exceeded(disk_dir, limits.max_disk_mb * 2 ** 20):
                    verdict = DISK_LIMIT
                    break
                next_poll = next_disk_poll(now)
            if not readers:  # both pipes closed, the process not yet gone
                time.sleep(min(0.005, deadline - now))
                continue
            wait = 0.1 if exited_at is None and disk_dir is None else 0.02
            if disk_dir is not None and exited_at is None:  # a silent writer is polled on time too
                wait = max(0.0, min(wait, next_poll - now))
            for key, _ in sel.select(min(deadline - now, wait)):
                fd = key.fd
                if key.events & selectors.EVENT_WRITE:
                    try:
                        n = os.write(fd, pending[:65536])
                        pending = pending[n:]
                    except BlockingIOError:
                        continue
                    except OSError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                chunk = read_chunk(fd)
                if chunk is None:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    continue
                room = cap - total
                bufs[fd] += chunk[:max(room, 0)]
                total += len(chunk)
                if total > cap:
                    verdict = OUTPUT_LIMIT
                    break
    if proc.stdin and not proc.stdin.closed:
        try:
            proc.stdin.close()
        except OSError:
            pass
    return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), verdict


def _cleanup(proc: subprocess.Popen, uid: int | None, marker: bytes | None) -> None:
    """Kill the process group, then every process of the slot's uid (or, without uid and PID
    namespace, every process carrying this run's environment marker); reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.warning("sandbox: process %d did not die", proc.pid)
    for f in (proc.stdout, proc.stderr):
        try:
            f.close()
        except OSError:
            pass
    if uid is not None:
        _kill_all(lambda: processes_of_uid(uid))
    elif marker is not None:
        me = str(os.getuid())
        _kill_all(lambda: _pids_where(lambda pid, st: st.get("Uid", "").split()[:1] == [me]
                                      and _has_marker(pid, marker)))


def _last_line(text: str) -> str:
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= 300 else line[:297] + "..."


def _classify(rc: int | None, out: bytes, err: bytes, verdict: str | None, limits: Limits,
              wall: float, started: bool = True) -> Execution:
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def done(status, reason):
        return Execution(status, rc, stdout, stderr, reason, round(wall, 4))

    if not started:  # the program never ran: whatever happened is the sandbox's failure
        setup = [line for line in stderr.splitlines() if _MARKER in line]
        if setup:
            return done(SANDBOX_ERROR, "sandbox " + setup[-1].split("thinkrl-sandbox: ", 1)[1])
        if verdict == TIMEOUT:
            what = "timed out"
        else:
            what = f"ended (signal {-rc})" if rc is not None and rc < 0 else f"ended (exit code {rc})"
        return done(SANDBOX_ERROR, f"sandbox {what} before the program started: {_last_line(stderr)}".rstrip(": "))
    if verdict == OUTPUT_LIMIT:
        return done(OUTPUT_LIMIT, f"output limit of {limits.max_output_bytes:,} bytes exceeded; killed")
    if verdict == DISK_LIMIT:
        return done(DISK_LIMIT, f"disk quota of {limits.max_disk_mb} MB exceeded; killed")
    if verdict == TIMEOUT:
        return done(TIMEOUT, f"wall-clock limit of {limits.wall_s:g} s exceeded; killed")
    last = _last_line(stderr)
    if rc is not None and rc < 0:
        sig = -rc
        if sig == signal.SIGXCPU:
            return done(TIMEOUT, f"CPU time limit of {limits.cpu_s:g} s exceeded; killed")
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return done(KILLED, f"killed by {name}")
    if rc == 0:
        return done(OK, "exited normally")
    if last.startswith(_REFUSED_PREFIX):
        return done(REFUSED, f"refused: {last[len('PermissionError: [sandbox] '):]}")
    if "[Errno 28] No space left on device" in last:  # the tmpfs of the quota is full
        return done(DISK_LIMIT, f"disk quota of {limits.max_disk_mb} MB exceeded ({last})")
    if last.startswith("MemoryError"):
        return done(MEMORY, f"memory limit of {limits.memory_mb} MB exceeded (MemoryError)")
    return done(ERROR, f"exit code {rc}" + (f": {last}" if last else ""))

