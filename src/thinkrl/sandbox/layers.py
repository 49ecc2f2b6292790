"""The isolation layers a sandboxed run can have: `Isolation` (which of them are active) and the
namespace flags it carries. `detect` finds the layers of this machine; `spawn` applies them."""

from __future__ import annotations

from dataclasses import dataclass, field

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x00020000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)


@dataclass(frozen=True)
class Isolation:
    """The layers active on this machine (see the package docstring)."""
    root: bool
    dedicated_uids: bool
    network_namespace: bool
    pid_namespace: bool
    ipc_namespace: bool
    user_namespace: bool  # the namespaces come from an unprivileged user namespace
    landlock_abi: int  # 0: no Landlock
    unshare_flags: int = 0
    mount_namespace: bool = False  # private mounts; the run's directory a tmpfs of the disk quota
    private_proc: bool = False  # /proc a procfs of the run's PID namespace (its processes only)
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

    @property
    def disk_quota(self) -> str:
        """How `Limits.max_disk_mb` is enforced."""
        return "tmpfs (kernel)" if self.unshare_flags & CLONE_NEWNS else "polled by the parent"

    def layers(self) -> list[str]:
        out = ["private temporary directory", "scrubbed environment", "resource limits (cpu, memory, "
               "processes, file size)", "no_new_privs", "process group kill", "wall-clock and output limits",
               f"disk quota ({self.disk_quota})", "audit hook (per run)"]
        if self.dedicated_uids:
            out.append(f"dedicated uid per slot ({self.uids[0]}..{self.uids[-1]})")
        for flag, name in ((self.network_namespace, "network"), (self.ipc_namespace, "IPC"),
                           (self.pid_namespace, "PID")):
            if flag:
                out.append(f"{name} namespace" + (" (in a user namespace)" if self.user_namespace else ""))
        if self.mount_namespace:
            out.append("mount namespace" + (" with its own /proc" if self.private_proc else ""))
        if self.landlock_abi:
            what = ["writes"] + (["TCP"] if self.landlock_tcp else []) + (["signals"] if self.landlock_signals else [])
            out.append(f"Landlock ABI {self.landlock_abi} ({', '.join(what)})")
        return out

    def summary(self) -> str:
        return "; ".join(self.layers())
