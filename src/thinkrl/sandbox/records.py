"""What a sandboxed run is given and what it gives back: `Limits`, `Job`, `Execution` and the
statuses an `Execution` can have."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

OK, ERROR, TIMEOUT, MEMORY, OUTPUT_LIMIT, DISK_LIMIT, KILLED, REFUSED, SANDBOX_ERROR = (
    "ok", "error", "timeout", "memory", "output_limit", "disk_limit", "killed", "refused", "sandbox_error")


@dataclass(frozen=True)
class Limits:
    cpu_s: float = 5.0  # CPU seconds (all threads of the main process)
    wall_s: float = 10.0  # wall-clock seconds, enforced by the parent
    memory_mb: int = 512  # address space (RLIMIT_AS) of each process
    max_processes: int = 16  # processes *and threads* the program may have at once
    max_output_bytes: int = 1_000_000  # stdout + stderr
    max_file_mb: int = 64  # largest file the program may write (RLIMIT_FSIZE)
    max_disk_mb: int = 128  # all the program may write in its directory together (a tmpfs, or polled)

    def __post_init__(self):
        for name in ("cpu_s", "wall_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v > 0 or math.isinf(v):
                raise ValueError(f"Limits.{name} must be a positive number of seconds, got {v!r}")
        for name, least in (("memory_mb", 32), ("max_processes", 1), ("max_output_bytes", 1), ("max_file_mb", 1),
                            ("max_disk_mb", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise ValueError(f"Limits.{name} must be an integer >= {least}, got {v!r}")


@dataclass
class Execution:
    status: str  # ok | error | timeout | memory | output_limit | disk_limit | killed | refused | sandbox_error
    returncode: int | None  # negative: killed by that signal
    stdout: str  # captured output, cut at the output limit
    stderr: str
    reason: str  # one readable line
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.status == OK


def checked_inputs(codes: dict[str, object], inputs: dict[str, object], limits) -> Limits:
    """The misuse checks of the sandbox's entry points: each code a str, each input str or bytes,
    `limits` a Limits (None: the defaults). Returns the limits to use; raises TypeError."""
    for name, v in codes.items():
        if not isinstance(v, str):
            raise TypeError(f"{name} must be a str, got {type(v).__name__}")
    for name, v in inputs.items():
        if not isinstance(v, (str, bytes)):
            raise TypeError(f"{name} must be str or bytes, got {type(v).__name__}")
    limits = Limits() if limits is None else limits
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a Limits, got {type(limits).__name__}")
    return limits


class Job(NamedTuple):
    code: str
    stdin: str | bytes = ""
    limits: Limits | None = None
    audit_hook: bool = True

