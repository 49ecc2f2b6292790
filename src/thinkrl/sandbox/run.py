"""`run_python`: one sandboxed run of a Python program under every layer this machine allows
(`detect.isolation()`); the parent's side of it is `spawn`."""

from __future__ import annotations

from .detect import isolation
from .records import Execution, Limits, checked_inputs
from .spawn import _execute


def run_python(code: str, stdin: str | bytes = "", limits: Limits | None = None, *,
               audit_hook: bool = True) -> Execution:
    """Run `code` as a Python program in the sandbox, `stdin` on its standard input. Returns
    an `Execution`; never raises for anything the program does. Thread-safe."""
    limits = checked_inputs({"code": code}, {"stdin": stdin}, limits)
    return _execute(code, stdin, limits, audit_hook=bool(audit_hook), iso=isolation())
