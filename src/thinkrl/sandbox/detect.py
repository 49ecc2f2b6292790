"""Which isolation layers this machine allows: `isolation()` detects them (an `Isolation`, from
`layers`) once per process by running probe programs under each layer, and warns once about
what is missing."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading

from .layers import CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, Isolation
from .records import OK, Limits
from .spawn import _execute

log = logging.getLogger("thinkrl.sandbox")

_N_SLOTS = 64  # dedicated uids (root): at most this many runs at once on the machine


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
if os.environ.get("PROBE_MOUNTS"):
    st = os.statvfs(".")
    out["disk"] = st.f_blocks * st.f_frsize
    out["procs"] = sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
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

    def probe(flags: int, uid_on: bool, ll: int, write_check: bool = False, proc: bool = False):
        iso = _isolation_of(root, uid_on, flags, ll, uids, proc=proc)
        env = {"PROBE_WRITE": "1"} if write_check else {"PROBE_MOUNTS": "1"} if flags & CLONE_NEWNS else None
        ex = _execute(_PROBE, "", Limits(cpu_s=5, wall_s=20, max_disk_mb=1), audit_hook=False, iso=iso,
                      extra_env=env)
        if ex.status != OK:
            return None, ex.reason
        try:
            return json.loads(ex.stdout.strip().splitlines()[-1]), ""
        except (ValueError, IndexError):
            return None, f"unreadable probe output {ex.stdout[:200]!r}"

    uid_on = False
    if uids:
        out, why = probe(0, True, 0)
        if out is not None and out.get("uid") in uids:  # whichever slot was free
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
    # a mount namespace (the disk quota's tmpfs) and, in the PID namespace, its own /proc
    proc = False
    if flags:
        out, why = probe(flags | CLONE_NEWNS, uid_on, 0)
        if out is not None and 0 < out.get("disk", 0) <= 2 ** 20:
            flags |= CLONE_NEWNS
            if flags & CLONE_NEWPID:
                out, why = probe(flags, uid_on, 0, proc=True)
                proc = out is not None and max(out.get("procs", [99])) <= 3 and os.getpid() not in out["procs"]
                if not proc:
                    notes.append(f"no private /proc: {why or out}".replace("sandbox setup failed ", ""))
        else:
            notes.append(f"no mount namespace (the disk quota is polled): {why or out}"
                         .replace("sandbox setup failed ", ""))
    else:
        notes.append("no mount namespace without the others (the disk quota is polled)")
    if abi:
        out, why = probe(flags, uid_on, abi, write_check=True)
        if out is None or out.get("write_outside") is not False:
            notes.append(f"Landlock ABI {abi} unusable: {why or 'a write outside was not refused'}"
                         .replace("sandbox setup failed ", ""))
            abi = 0
    else:
        notes.append("no Landlock in this kernel")
    return _isolation_of(root, uid_on, flags, abi, uids, tuple(notes), proc)


def _isolation_of(root: bool, uid_on: bool, flags: int, abi: int, uids: tuple[int, ...],
                  notes: tuple[str, ...] = (), proc: bool = False) -> Isolation:
    return Isolation(root=root, dedicated_uids=uid_on, network_namespace=bool(flags & CLONE_NEWNET),
                     pid_namespace=bool(flags & CLONE_NEWPID), ipc_namespace=bool(flags & CLONE_NEWIPC),
                     user_namespace=bool(flags & CLONE_NEWUSER), landlock_abi=abi, unshare_flags=flags,
                     mount_namespace=bool(flags & CLONE_NEWNS), private_proc=proc and bool(flags & CLONE_NEWPID),
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
    if not iso.private_proc:
        log.warning("sandbox: no private /proc here (%s): other processes' /proc entries are hidden from "
                    "sandboxed code only by the audit hook%s; the disk quota is %s", why or "no mount namespace",
                    " (and their environ, fds and cwd by the dedicated uid)" if iso.dedicated_uids else "",
                    iso.disk_quota)
    log.info("sandbox layers: %s", iso.summary())



def _reset_after_fork() -> None:
    """In a forked child the parent's lock may be held."""
    global _iso_lock
    _iso_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
