"""A sandbox for untrusted, model-written Python: one fresh interpreter per run, fenced in by
every layer the machine allows, killed with everything it started when the run ends.

    run_python(code, stdin="", limits=Limits()) -> Execution
    SandboxPool(workers=None).map([Job(code, stdin), ...]) -> list[Execution]
    isolation() -> Isolation        # which layers are active here (detected once, cached)

Each run is `python -I -S -B -X utf8 -c BOOTSTRAP` (this interpreter, isolated mode, no
site-packages: the standard library only). The bootstrap applies the layers below, then runs
the program (`main.py` in the run's private directory) as `__main__`. A layer that was detected
but cannot be applied fails the run closed (status "sandbox_error"), never silently. Layers,
in the order they are applied, and where each applies:

- **Private directory** (always): a fresh temporary directory is the program's cwd, HOME and
  TMPDIR; it is deleted after the run.
- **Scrubbed environment** (always): none of the parent's variables; only PATH (system
  directories), HOME, TMPDIR, LANG/LC_ALL, PYTHONDONTWRITEBYTECODE, PYTHONIOENCODING and a
  per-run marker.
- **Namespaces** (where the kernel allows): a new network namespace (only a downed loopback:
  nothing, not even 127.0.0.1, is reachable), IPC namespace (SysV IPC, POSIX queues) and PID
  namespace. In the PID namespace a small init runs the program as its child: the program
  cannot see or signal any process outside, and when it ends init exits and the kernel kills
  everything left inside. As root the namespaces are made directly; as any other user (or as
  root without CAP_SYS_ADMIN, after dropping to the slot's uid) inside a new user namespace
  mapping only that uid (capabilities dropped), where unprivileged user namespaces are enabled.
- **Dedicated uid** (root only): each concurrent run gets its own unprivileged uid (a "slot",
  locked across processes). File permissions then keep it away from the host's files, home and
  working tree, it cannot signal or trace the parent or read its /proc entries, RLIMIT_NPROC
  bites, and afterwards every process of that uid is killed (found by scanning /proc) and what
  it left in /tmp, /var/tmp and /dev/shm is removed. The interpreter may live where that uid
  cannot go (pyenv under /root): the import path is opened before privileges are dropped and
  reached through /proc/self/fd.
- **Resource limits** (always): RLIMIT_CPU (SIGXCPU at the limit, SIGKILL a second later),
  RLIMIT_AS (memory), RLIMIT_NPROC (processes and threads; without a dedicated uid or user
  namespace it counts the user's other tasks too, so it is set to their number plus the limit),
  RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0. Hard limits cannot be raised again.
- **no_new_privs** (always): setuid binaries give nothing.
- **Landlock** (Linux >= 5.13 with Landlock enabled, root or not): the kernel refuses every
  write, create, delete, rename or link outside the private directory (and /dev/null), and
  mounts; from ABI 4 every TCP bind/connect; from ABI 6 signals to processes outside the
  sandbox and connections to abstract unix sockets. Reads are not restricted (beyond ordinary
  permissions): the program can read what its uid can read.
- **Process group** (always): the program leads its own session; the whole group is SIGKILLed
  when the run ends. Without a dedicated uid or PID namespace, processes that left the group are
  found by the per-run marker in their environment and killed too.
- **Wall clock and output** (always, enforced by the parent): the run is killed at `wall_s`, or
  as soon as stdout+stderr exceed `max_output_bytes` (what came before the cap is kept).
- **Audit hook** (always, unless `audit_hook=False`): `sys.addaudithook`, installed before the
  program runs, refuses network use, process creation, signals, ctypes, writes/deletes/renames
  outside the private directory, links, reading other processes' /proc entries or process
  memory, raising resource limits, gc's object enumeration and rewriting the hook, with
  `PermissionError: [sandbox] ...` (status "refused"). It is cheap, gives a readable reason,
  and is the only barrier where the OS layers are missing; but an in-process hook can be got
  around by a determined program, so where the OS layers exist they are the real barrier.
  `audit_hook=False` exists to test those on their own.

`isolation()` says which layers are active, and logs one warning (once per process) when network
isolation, process containment or write protection is missing.

The sandbox never raises because of what a program does; only misuse (wrong argument types, bad
limits) raises. Trouble in the sandbox itself comes back as status "sandbox_error".
"""

from __future__ import annotations

import ctypes
import fcntl
import json
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
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

log = logging.getLogger("thinkrl.sandbox")

OK, ERROR, TIMEOUT, MEMORY, OUTPUT_LIMIT, KILLED, REFUSED, SANDBOX_ERROR = (
    "ok", "error", "timeout", "memory", "output_limit", "killed", "refused", "sandbox_error")

CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x08000000, 0x10000000, 0x20000000, 0x40000000

_SETUP_EXIT = 125  # the bootstrap's exit code when a layer it was asked for cannot be set up
_MARKER = "thinkrl-sandbox: setup failed"
_REFUSED_PREFIX = "PermissionError: [sandbox]"
_PATH = "/usr/local/bin:/usr/bin:/bin"
_N_SLOTS = 64  # dedicated uids (root): at most this many runs at once on the machine


@dataclass(frozen=True)
class Limits:
    cpu_s: float = 5.0  # CPU seconds (all threads of the main process)
    wall_s: float = 10.0  # wall-clock seconds, enforced by the parent
    memory_mb: int = 512  # address space (RLIMIT_AS) of each process
    max_processes: int = 16  # processes *and threads* the program may have at once
    max_output_bytes: int = 1_000_000  # stdout + stderr
    max_file_mb: int = 64  # largest file the program may write (RLIMIT_FSIZE)

    def __post_init__(self):
        for name in ("cpu_s", "wall_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v > 0 or math.isinf(v):
                raise ValueError(f"Limits.{name} must be a positive number of seconds, got {v!r}")
        for name, least in (("memory_mb", 32), ("max_processes", 1), ("max_output_bytes", 1), ("max_file_mb", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise ValueError(f"Limits.{name} must be an integer >= {least}, got {v!r}")


@dataclass
class Execution:
    status: str  # ok | error | timeout | memory | output_limit | killed | refused | sandbox_error
    returncode: int | None  # negative: killed by that signal
    stdout: str  # captured output, cut at the output limit
    stderr: str
    reason: str  # one readable line
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.status == OK


class Job(NamedTuple):
    code: str
    stdin: str | bytes = ""
    limits: Limits | None = None
    audit_hook: bool = True


@dataclass(frozen=True)
class Isolation:
    """The layers active on this machine (see the module docstring)."""
    root: bool
    dedicated_uids: bool
    network_namespace: bool
    pid_namespace: bool
    ipc_namespace: bool
    user_namespace: bool  # the namespaces come from an unprivileged user namespace
    landlock_abi: int  # 0: no Landlock
    unshare_flags: int = 0
    uids: tuple[int, ...] = field(default=(), repr=False)
    notes: tuple[str, ...] = field(default=())  # why a layer is missing
    # always on: private temporary directory, scrubbed environment, resource limits,
    # no_new_privs, process group kill, wall-clock and output limits, audit hook (per run)

    @property
    def landlock_writes(self) -> bool:
        return self.landlock_abi >= 1

    @property
    def landlock_tcp(self) -> bool:
        return self.landlock_abi >= 4

    @property
    def landlock_signals(self) -> bool:
        return self.landlock_abi >= 6

    @property
    def contains_processes(self) -> bool:
        """Whether everything a program starts is confined and killed by the OS (a dedicated
        uid or a PID namespace), not only by the process group and the audit hook."""
        return self.dedicated_uids or self.pid_namespace

    @property
    def write_protection(self) -> bool:
        """Whether the OS refuses writes outside the private directory (Landlock, or the
        permissions of a dedicated uid)."""
        return self.landlock_writes or self.dedicated_uids

    def layers(self) -> list[str]:
        out = ["private temporary directory", "scrubbed environment", "resource limits (cpu, memory, "
               "processes, file size)", "no_new_privs", "process group kill", "wall-clock and output limits",
               "audit hook (per run)"]
        if self.dedicated_uids:
            out.append(f"dedicated uid per slot ({self.uids[0]}..{self.uids[-1]})")
        for flag, name in ((self.network_namespace, "network"), (self.ipc_namespace, "IPC"),
                           (self.pid_namespace, "PID")):
            if flag:
                out.append(f"{name} namespace" + (" (in a user namespace)" if self.user_namespace else ""))
        if self.landlock_abi:
            what = ["writes"] + (["TCP"] if self.landlock_tcp else []) + (["signals"] if self.landlock_signals else [])
            out.append(f"Landlock ABI {self.landlock_abi} ({', '.join(what)})")
        return out

    def summary(self) -> str:
        return "; ".join(self.layers())


# ---------------------------------------------------------------- the child's bootstrap
# Runs as `python -I -S -B -X utf8 -c _BOOTSTRAP CONFIG` in the private directory. It must use
# only the standard library; it applies the layers named in CONFIG and fails closed (exit 125
# with a `thinkrl-sandbox: setup failed [layer] ...` line) when one cannot be applied.

_BOOTSTRAP = r'''
import os, sys

def _setup(cfg):
    import ctypes, resource
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    uid, flags, tmp = cfg["uid"], cfg["unshare"], cfg["tmp"]

    def fail(layer, what):
        os.write(2, ("%s [%s] %s\n" % (cfg["marker"], layer, what)).encode())
        os._exit(cfg["setup_exit"])

    def err():
        return os.strerror(ctypes.get_errno())

    if uid is not None:
        # the interpreter may sit where the sandbox uid cannot go: open the import path now
        moved = []
        for p in sys.path:
            try:
                moved.append((p, "/proc/self/fd/%d" % os.open(p, os.O_RDONLY | os.O_DIRECTORY)))
            except OSError:
                pass
        sys.path[:] = [new for _, new in moved]
        sys.path_importer_cache.clear()
        for mod in list(sys.modules.values()):  # packages imported at startup (collections, ...)
            search = getattr(mod, "__path__", None)
            if isinstance(search, list):
                for i, entry in enumerate(search):
                    for old, new in moved:
                        if entry.startswith(old + "/"):
                            search[i] = new + entry[len(old):]
                            break

    def drop_to_uid():
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        except OSError as e:
            fail("uid", "cannot become uid %d: %s" % (uid, e))
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            fail("uid", "could become root again")
        if os.getuid() != uid or os.geteuid() != uid or os.getgroups():
            fail("uid", "credentials are not those of uid %d" % uid)

    # namespaces need privilege: made first, then the uid is dropped; but a user namespace is
    # made by the unprivileged uid itself (root without CAP_SYS_ADMIN, e.g. in a container)
    if uid is not None and flags & 0x10000000:
        drop_to_uid()
        libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: our /proc/self/*_map become ours to write
        uid = None
    if flags:
        outer_uid, outer_gid = os.getuid(), os.getgid()
        if libc.unshare(ctypes.c_int(flags)) != 0:
            fail("namespaces", "unshare(0x%x): %s" % (flags, err()))
        if flags & 0x10000000:  # a user namespace: our own ids only, then no capabilities
            try:
                for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (outer_uid, outer_uid)),
                                   ("gid_map", "%d %d 1" % (outer_gid, outer_gid))):
                    with open("/proc/self/" + name, "w") as f:
                        f.write(text)
            except OSError as e:
                fail("namespaces", "user namespace id maps: %s" % e)
            header = (ctypes.c_uint32 * 2)(0x20080522, 0)
            if libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:
                fail("namespaces", "capset: %s" % err())
    if uid is not None:
        drop_to_uid()

    for name, soft, hard in cfg["rlimits"]:
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (OSError, ValueError) as e:
            fail("rlimits", "%s: %s" % (name, e))

    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        fail("no_new_privs", err())

    abi = cfg["landlock"]
    if abi:
        sc, L = libc.syscall, ctypes.c_long
        fs = 0x1ff2  # write, remove dir/file, make char/dir/reg/sock/fifo/block/sym
        fs |= (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)  # refer, truncate
        attr = (ctypes.c_uint64 * 3)(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
        ruleset = sc(L(444), attr, L(24 if abi >= 6 else 16 if abi >= 4 else 8), L(0))
        if ruleset < 0:
            fail("landlock", "create_ruleset: %s" % err())

        class Beneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

        for path, allowed in ((tmp, fs), ("/dev/null", (1 << 1) | (1 << 14 if abi >= 3 else 0))):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            if sc(L(445), L(ruleset), L(1), ctypes.byref(Beneath(allowed, fd)), L(0)) != 0:
                fail("landlock", "add_rule %s: %s" % (path, err()))
            os.close(fd)
        if sc(L(446), L(ruleset), L(0)) != 0:
            fail("landlock", "restrict_self: %s" % err())
        os.close(ruleset)

    os.chdir(tmp)
    os.umask(0o077)

    if flags & 0x20000000:
        # a PID namespace holds our children, not us: this process stays outside and waits; its
        # child is the namespace's init, which runs the program as its own child (so the program
        # keeps ordinary signal semantics), reaps orphans, and passes the program's wait status
        # out through a pipe; when init exits the kernel kills everything left in the namespace
        import _signal  # not `signal`: its enums cost milliseconds
        r, w = os.pipe()
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # for init; the program gets it back
        pid = os.fork()
        if pid:
            os.close(w)
            os.close(cfg["started_fd"])
            os.waitpid(pid, 0)
            data = os.read(r, 32)
            status = int(data) if data.strip().isdigit() else 9  # init killed: as if by SIGKILL
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                try:
                    _signal.signal(sig, _signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
                os.kill(os.getpid(), sig)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        os.close(r)
        pid = os.fork()
        if pid:
            os.close(cfg["started_fd"])
            while True:
                done, status = os.waitpid(-1, 0)
                if done == pid:
                    break
            os.write(w, str(status).encode())
            os._exit(0)
        os.close(w)
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)


def _guard(tmp):
    """The audit hook. It keeps its state in default arguments and uses no module globals, so
    the program cannot reconfigure it by patching modules."""
    import _posixsubprocess, _signal

    def no_process(*a, **k):
        raise PermissionError("[sandbox] process creation is not allowed")

    def no_signal(*a, **k):
        raise PermissionError("[sandbox] signalling other processes is not allowed")

    _posixsubprocess.fork_exec = no_process  # not audited itself
    for mod, name in ((os, "pidfd_open"), (sys.modules.get("posix"), "pidfd_open"),  # not audited
                      (_signal, "pidfd_send_signal"), (sys.modules.get("signal"), "pidfd_send_signal")):
        if mod is not None and hasattr(mod, name):
            setattr(mod, name, no_signal)

    watched = {}
    for kind, events in (
        ("process creation", "os.fork os.forkpty os.system os.exec os.posix_spawn os.spawn subprocess.Popen "
                             "os.startfile pty.spawn"),
        ("signalling other processes", "os.kill os.killpg signal.pthread_kill"),
        ("network access", "socket.connect socket.bind socket.sendto socket.sendmsg socket.getaddrinfo "
                           "socket.gethostbyname socket.gethostbyname_ex socket.gethostbyaddr "
                           "socket.getnameinfo socket.sethostname"),
        ("changing resource limits", "resource.setrlimit resource.prlimit"),
        ("enumerating the interpreter's objects", "gc.get_objects gc.get_referrers gc.get_referents"),
        ("creating links", "os.link os.symlink"),
    ):
        for e in events.split():
            watched[e] = kind
    paths = {"os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.rename": ((0, 2), (1, 3)),
             "os.mkdir": ((0, 2),), "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),),
             "os.truncate": ((0, None),), "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
             "os.mknod": ((0, 3),), "os.mkfifo": ((0, 2),)}
    for e in paths:
        watched[e] = "path"
    watched["open"] = "open"
    watched["sqlite3.connect"] = "sqlite"
    watched["import"] = "import"
    watched["object.__setattr__"] = watched["object.__delattr__"] = "setattr"

    def norm(path, dir_fd=None, _getcwd=os.getcwd, _readlink=os.readlink, _fspath=os.fspath,
             _isinstance=isinstance, _str=str, _bytes=bytes):
        """(absolute lexically normalised path, whether it was given absolute); lexical is
        enough because no link can be made inside the sandbox directory."""
        if _isinstance(path, _bytes):
            path = path.decode("utf-8", "surrogateescape")
        elif not _isinstance(path, _str):
            path = _fspath(path)
            if _isinstance(path, _bytes):
                path = path.decode("utf-8", "surrogateescape")
        absolute = path.startswith("/")
        if not absolute:
            base = _getcwd() if dir_fd in (None, -1, -100) else _readlink("/proc/self/fd/%d" % dir_fd)
            path = base + "/" + path
        parts = []
        for part in path.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        return "/" + "/".join(parts), absolute

    me = os.readlink("/proc/self")  # this process's number in /proc (not os.getpid() in a PID namespace)
    protected_modules = frozenset({"_posixsubprocess", "posix", "_signal", "_ctypes", "ctypes"})
    from types import MappingProxyType

    # the hook's state is immutable (a program can reach the hook's frame from the traceback of
    # a refusal and read its locals), and its helper function cannot be rewritten
    def audit(event, args, _watched=MappingProxyType(watched), _paths=MappingProxyType(paths),
              _tmp=tmp, _tmp_slash=tmp + "/", _me=me, _norm=norm, _isinstance=isinstance, _int=int, _str=str,
              _PE=PermissionError, _protected=protected_modules,
              _write=os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC):
        kind = _watched.get(event)
        if kind is None:
            if event.startswith("ctypes."):
                raise _PE("[sandbox] ctypes is not allowed (%s)" % event)
            return
        if kind == "setattr":  # (__code__, __defaults__, ...) of the hook's one Python helper
            if args[0] is _norm:
                raise _PE("[sandbox] rewriting the sandbox's functions is not allowed (%s)" % args[1])
            return
        if kind == "import":
            if args[0] in _protected:
                raise _PE("[sandbox] importing %s is not allowed" % args[0])
            return
        if kind == "open":
            path, flags = args[0], args[2]
            if _isinstance(path, _int) or path is None:
                return
            p, absolute = _norm(path)
            if not _isinstance(flags, _int) or flags & _write:
                if p == "/dev/null":
                    return
                if p != _tmp and not p.startswith(_tmp_slash):
                    raise _PE("[sandbox] writing outside the sandbox directory is not allowed (%s)" % p)
                if not absolute and args[1] is None:  # os.open: its dir_fd is not in the event
                    raise _PE("[sandbox] os.open of a relative path for writing is not allowed; use an "
                              "absolute path or open()")
                return
            if p.startswith("/proc/"):
                pid = p[6:].split("/", 1)[0]
                if pid.isdigit() and pid != _me:
                    raise _PE("[sandbox] reading other processes' /proc entries is not allowed (%s)" % p)
                if p.endswith("/mem"):
                    raise _PE("[sandbox] reading process memory is not allowed (%s)" % p)
            return
        if kind == "path":
            for i, j in _paths[event]:
                target = args[i]
                if _isinstance(target, _int):
                    continue
                p = _norm(target, None if j is None else args[j])[0]
                if p != _tmp and not p.startswith(_tmp_slash):
                    raise _PE("[sandbox] changing files outside the sandbox directory is not allowed (%s %s)"
                              % (event, p))
            return
        if kind == "sqlite":
            db = args[0]
            if db in (":memory:", "", b":memory:", b""):
                return
            p = _norm(db)[0] if not (_isinstance(db, _str) and db.startswith("file:")) else "file:"
            if p != _tmp and not p.startswith(_tmp_slash):
                raise _PE("[sandbox] databases outside the sandbox directory are not allowed (%s)" % p)
            return
        raise _PE("[sandbox] %s is not allowed (%s)" % (kind, event))

    sys.addaudithook(audit)


def _run(cfg):
    import types
    path = cfg["tmp"] + "/main.py"
    with open(path, "rb") as f:
        source = f.read()
    for name in ("ctypes", "_ctypes", "ctypes._endian", "resource"):
        sys.modules.pop(name, None)
    if cfg["hook"]:
        _guard(cfg["tmp"])
    os.write(cfg["started_fd"], b"1")  # tells the parent that what follows is the program's doing
    os.close(cfg["started_fd"])
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    sys.argv = [path]
    try:
        exec(compile(source, path, "exec"), main.__dict__)
    except SystemExit:
        raise
    except BaseException as e:
        tb = e.__traceback__
        e.__traceback__ = tb = tb.tb_next if tb is not None else None  # the program's frames only
        sys.excepthook(type(e), e, tb)
        sys.exit(1)


_cfg = eval(sys.argv[1], {"__builtins__": {}})  # a literal written by the parent (json would import re)
try:
    _setup(_cfg)
except Exception as e:
    os.write(2, ("%s [setup] %s: %s\n" % (_cfg["marker"], type(e).__name__, e)).encode())
    os._exit(_cfg["setup_exit"])
del _setup
_run(_cfg)
'''


# ---------------------------------------------------------------- detection


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _landlock_abi() -> int:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        abi = libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1))
        return int(abi) if abi > 0 else 0
    except (OSError, AttributeError):
        return 0


def _id_ranges(path: str) -> list[tuple[int, int]]:
    try:
        with open(path) as f:
            return [(int(a), int(a) + int(n)) for a, _, n in (line.split() for line in f if line.strip())]
    except (OSError, ValueError):
        return [(0, 2 ** 32 - 1)]


def _free_uids(n: int) -> tuple[int, ...]:
    """n consecutive ids that no user or group has and this user namespace maps."""
    import grp
    import pwd

    uranges, granges = _id_ranges("/proc/self/uid_map"), _id_ranges("/proc/self/gid_map")
    for base in (2_100_000_000, 1_100_000_000, 910_000, 61_000, 30_000):
        ids = range(base, base + n)
        if not all(any(a <= i < b for a, b in r) for r in (uranges, granges) for i in ids):
            continue
        taken = False
        for i in ids:
            try:
                pwd.getpwuid(i)
                taken = True
            except KeyError:
                pass
            try:
                grp.getgrgid(i)
                taken = True
            except KeyError:
                pass
        if not taken:
            return tuple(ids)
    return ()


_PROBE = """
import fractions, heapq, json, os
out = {"uid": os.getuid(), "pid": os.getpid()}
if os.environ.get("PROBE_WRITE"):
    target = os.path.join(os.path.dirname(os.getcwd()), "thinkrl-sandbox-probe-" + os.urandom(8).hex())
    try:
        with open(target, "w"):
            pass
        os.remove(target)
        out["write_outside"] = True
    except OSError:
        out["write_outside"] = False
print(json.dumps(out))
"""

_iso_lock = threading.Lock()
_iso: Isolation | None = None


def isolation() -> Isolation:
    """The isolation layers active on this machine: detected on first use by running probe
    programs under each layer (about a tenth of a second), cached for the process. Logs one
    warning when network isolation, process containment or write protection is missing."""
    global _iso
    with _iso_lock:
        if _iso is None:
            _iso = _detect()
            _warn(_iso)
        return _iso


def _detect() -> Isolation:
    root = os.geteuid() == 0
    notes: list[str] = []
    abi = _landlock_abi()
    uids = _free_uids(_N_SLOTS) if root else ()
    if root and not uids:
        notes.append("no free uid range for sandbox slots")

    def probe(flags: int, uid_on: bool, ll: int, write_check: bool = False):
        iso = _isolation_of(root, uid_on, flags, ll, uids)
        ex = _execute(_PROBE, "", Limits(cpu_s=5, wall_s=20), audit_hook=False, iso=iso,
                      extra_env={"PROBE_WRITE": "1"} if write_check else None)
        if ex.status != OK:
            return None, ex.reason
        try:
            return json.loads(ex.stdout.strip().splitlines()[-1]), ""
        except (ValueError, IndexError):
            return None, f"unreadable probe output {ex.stdout[:200]!r}"

    uid_on = False
    if uids:
        out, why = probe(0, True, 0)
        if out is not None and out.get("uid") == uids[0]:
            uid_on = True
        else:
            notes.append(f"dedicated uids unusable: {why or out}".replace("sandbox setup failed ", ""))
    # as root the namespaces directly, else (or where root lacks CAP_SYS_ADMIN) in a user namespace
    plain = [CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWPID, CLONE_NEWNET | CLONE_NEWIPC, CLONE_NEWNET]
    candidates = (plain if root else []) + [CLONE_NEWUSER | f for f in plain]
    flags, failures = 0, []
    for cand in candidates:
        out, why = probe(cand, uid_on, 0)
        if out is not None:
            flags = cand
            break
        failures.append(why.replace("sandbox setup failed [namespaces] ", ""))
    if failures:
        notes.append(f"namespaces: {failures[0]}" + (f"; fell back to unshare(0x{flags:x})" if flags else ""))
    if abi:
        out, why = probe(flags, uid_on, abi, write_check=True)
        if out is None or out.get("write_outside") is not False:
            notes.append(f"Landlock ABI {abi} unusable: {why or 'a write outside was not refused'}"
                         .replace("sandbox setup failed ", ""))
            abi = 0
    else:
        notes.append("no Landlock in this kernel")
    return _isolation_of(root, uid_on, flags, abi, uids, tuple(notes))


def _isolation_of(root: bool, uid_on: bool, flags: int, abi: int, uids: tuple[int, ...],
                  notes: tuple[str, ...] = ()) -> Isolation:
    return Isolation(root=root, dedicated_uids=uid_on, network_namespace=bool(flags & CLONE_NEWNET),
                     pid_namespace=bool(flags & CLONE_NEWPID), ipc_namespace=bool(flags & CLONE_NEWIPC),
                     user_namespace=bool(flags & CLONE_NEWUSER), landlock_abi=abi, unshare_flags=flags,
                     uids=uids if uid_on else (), notes=notes)


def _warn(iso: Isolation) -> None:
    why = "; ".join(iso.notes)
    if not iso.network_namespace:
        log.warning("sandbox: no network namespace here (%s): network use by sandboxed code is refused "
                    "only by the audit hook%s", why, " and Landlock (TCP)" if iso.landlock_tcp else "")
    if not iso.contains_processes:
        log.warning("sandbox: neither a dedicated uid (needs root) nor a PID namespace here: processes a "
                    "program starts are contained by the audit hook, RLIMIT_NPROC and a process-group and "
                    "environment-marker kill only")
    if not iso.write_protection:
        log.warning("sandbox: neither Landlock nor a dedicated uid here: writes outside the sandbox "
                    "directory are refused only by the audit hook")
    log.info("sandbox layers: %s", iso.summary())


# ---------------------------------------------------------------- uid slots (root)


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


# ---------------------------------------------------------------- process bookkeeping


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


# ---------------------------------------------------------------- running


def run_python(code: str, stdin: str | bytes = "", limits: Limits | None = None, *,
               audit_hook: bool = True) -> Execution:
    """Run `code` as a Python program in the sandbox, `stdin` on its standard input. Returns
    an `Execution`; never raises for anything the program does. Thread-safe."""
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    if not isinstance(stdin, (str, bytes)):
        raise TypeError(f"stdin must be str or bytes, got {type(stdin).__name__}")
    limits = Limits() if limits is None else limits
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a Limits, got {type(limits).__name__}")
    return _execute(code, stdin, limits, audit_hook=bool(audit_hook), iso=isolation())


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
    start = time.monotonic()
    uid = fd = None
    if iso.dedicated_uids:
        uid, fd = _slots.acquire(iso.uids)
    tmp = None
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
               "marker": _MARKER, "setup_exit": _SETUP_EXIT}
        data = stdin.encode("utf-8", "surrogateescape") if isinstance(stdin, str) else bytes(stdin)
        try:
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
            try:
                out, err, verdict = _drive(proc, data, limits, start)
            finally:
                _cleanup(proc, uid, None if iso.contains_processes else f"THINKRL_SANDBOX_RUN={run_id}".encode())
            os.set_blocking(started_r, False)
            try:
                started = os.read(started_r, 1) == b"1"
            except BlockingIOError:
                started = False
        finally:
            os.close(started_r)
        return _classify(proc.returncode, out, err, verdict, limits, time.monotonic() - start, started)
    finally:
        if tmp is not None:
            _rmtree(tmp)
        if uid is not None:
            _sweep_shared_dirs(uid)
            _slots.release(uid, fd)


def _drive(proc: subprocess.Popen, data: bytes, limits: Limits, start: float):
    """Feed stdin, collect stdout/stderr, enforce the wall clock and the output cap. Returns
    (stdout, stderr, verdict) with verdict None, TIMEOUT or OUTPUT_LIMIT."""
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
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
            if not readers:  # both pipes closed, the process not yet gone
                time.sleep(min(0.005, deadline - now))
                continue
            for key, _ in sel.select(min(deadline - now, 0.1 if exited_at is None else 0.02)):
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
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
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
    if last.startswith("MemoryError"):
        return done(MEMORY, f"memory limit of {limits.memory_mb} MB exceeded (MemoryError)")
    return done(ERROR, f"exit code {rc}" + (f": {last}" if last else ""))


# ---------------------------------------------------------------- the pool


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

    def map(self, jobs: Iterable[Job | str]) -> list[Execution]:
        """Run every job (a `Job`, or just the code), in parallel; results in order."""
        futures = []
        for job in jobs:
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
    """In a forked child the parent's pool threads are gone and its locks may be held."""
    global _default_pool, _default_pool_lock, _iso_lock, _slots
    _default_pool, _default_pool_lock, _iso_lock, _slots = None, threading.Lock(), threading.Lock(), _UidSlots()


os.register_at_fork(after_in_child=_reset_after_fork)
