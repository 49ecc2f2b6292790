"""A sandbox for untrusted, model-written Python: one fresh interpreter per run, fenced in by
every layer the machine allows, killed with everything it started when the run ends.

    run_python(code, stdin="", limits=Limits()) -> Execution
    run_pair(judge_code, judge_input, program_code, limits) -> (Execution, Execution)
    SandboxPool(workers=None).map([Job(code, stdin), ...]) -> list[Execution]
    isolation() -> Isolation        # which layers are active here (detected once, cached)

Each run is `python -I -S -B -X utf8 -c BOOTSTRAP` (this interpreter, isolated mode, no
site-packages: the standard library only). The bootstrap applies the layers below, then runs
the program (`main.py` in the run's private directory) as `__main__`. A layer that was detected
but cannot be applied fails the run closed (status "sandbox_error"), never silently. Layers,
in the order they are applied, and where each applies:

- **Private directory** (always): a fresh temporary directory is the program's cwd, HOME and
  TMPDIR; it is deleted after the run.
- **Disk quota** (always): all the program writes there together stays within
  `Limits.max_disk_mb`. In a mount namespace the directory is a tmpfs of that size (memory, not
  disk; freed with the namespace), and a write beyond it fails with ENOSPC (status
  "disk_limit" when the program dies of it); elsewhere the parent polls the directory's usage
  (each file at least 4 KiB; every 2 ms) and kills the run over it ("disk_limit": what is
  written between two polls may land first). RLIMIT_FSIZE bounds each file.
- **Scrubbed environment** (always): none of the parent's variables; only PATH (system
  directories), HOME, TMPDIR, LANG/LC_ALL, PYTHONDONTWRITEBYTECODE, PYTHONIOENCODING and a
  per-run marker.
- **Namespaces** (where the kernel allows): a new network namespace (only a downed loopback:
  nothing, not even 127.0.0.1, is reachable), IPC namespace (SysV IPC, POSIX queues) and PID
  namespace. In the PID namespace a small init runs the program as its child: the program
  cannot signal any process outside, and when it ends init exits and the kernel kills
  everything left inside. With them a mount namespace (all mounts made private: nothing
  propagates to the host) holds the disk quota's tmpfs and, mounted by init, a procfs of the
  PID namespace over /proc: the program sees only its own processes (init and its own), none
  of the host's (command lines, environments, cwd, fd links), by any path or dir_fd. As root
  the namespaces are made directly; as any other user (or as root without CAP_SYS_ADMIN, after
  dropping to the slot's uid) inside a new user namespace mapping only that uid (capabilities
  dropped), where unprivileged user namespaces are enabled (a kernel may refuse a procfs there:
  then the mount namespace comes without its own /proc, and `isolation().notes` says why).
- **Dedicated uid** (root only): each concurrent run gets its own unprivileged uid (a "slot",
  locked across processes). File permissions then keep it away from the host's files, home and
  working tree, it cannot signal or trace the parent or read its /proc environ, fds or cwd (a
  command line is world-readable: the private /proc or the hook hides those), RLIMIT_NPROC
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
  memory, listing /proc, raising resource limits, gc's object enumeration and rewriting the
  hook, with `PermissionError: [sandbox] ...` (status "refused"). Paths read are checked after
  following symlinks (/proc/self/root/..., /dev/fd/../.., /proc/self/fd/N/...); os.readlink,
  which raises no audit event, is replaced by a checked one; and since the `open` event of
  os.open does not carry its dir_fd, a relative os.open through ".." or an all-digit component
  is refused (another process's /proc entry is reached from any directory only through its
  number, or ".." from one's own). It is cheap, gives a readable reason, and is the only
  barrier where the OS layers are missing; but an in-process hook can be got around by a
  determined program (its helpers, reachable through frames, hold the original os.readlink;
  os.stat with a dir_fd is unchecked), so where the OS layers exist they are the real barrier.
  `audit_hook=False` exists to test those on their own.

`isolation()` says which layers are active (`mount_namespace`, `private_proc`, `disk_quota`, ...),
and logs one warning (once per process) when network isolation, process containment or write
protection is missing.

The sandbox never raises because of what a program does; only misuse (wrong argument types, bad
limits) raises. Trouble in the sandbox itself comes back as status "sandbox_error".

Modules, one concept each:

- `records`: what a run is given and gives back (`Limits`, `Job`, `Execution`, the statuses).
- `bootstrap`: the code that runs in the child (namespaces, mounts, uid, rlimits, no_new_privs,
  Landlock, the PID namespace's init), as source text.
- `guard`: the audit hook, as source text the bootstrap includes.
- `layers`: `Isolation`, the layers a run has, and the namespace flags.
- `detect`: which layers this machine allows (`isolation()`), found by probe runs.
- `slots`: the dedicated uids (one run at a time each, locked across processes) and the /proc
  bookkeeping that finds, kills and sweeps up what a run left behind.
- `spawn`: the parent side of one run under given layers: spawn, limits, output capture, kill, verdict.
- `run`: `run_python`, one run under this machine's layers.
- `pair`: `run_pair` and `PairJob`, two runs (a judge and a program) that exchange lines only
  through the parent, which relays them; only the judge's own output is its result.
- `pool`: `SandboxPool` and `default_pool()`, many runs (and pairs) at once.
"""

from .detect import isolation
from .layers import CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, Isolation
from .pair import PairJob, run_pair
from .pool import SandboxPool, default_pool
from .records import (DISK_LIMIT, ERROR, KILLED, MEMORY, OK, OUTPUT_LIMIT, REFUSED, SANDBOX_ERROR, TIMEOUT,
                      Execution, Job, Limits)
from .run import run_python
from .slots import processes_of_uid

__all__ = [
    "OK", "ERROR", "TIMEOUT", "MEMORY", "OUTPUT_LIMIT", "DISK_LIMIT", "KILLED", "REFUSED", "SANDBOX_ERROR",
    "CLONE_NEWNS", "CLONE_NEWIPC", "CLONE_NEWUSER", "CLONE_NEWPID", "CLONE_NEWNET",
    "Limits", "Execution", "Job", "Isolation", "isolation", "run_python", "SandboxPool", "default_pool",
    "processes_of_uid",
]
