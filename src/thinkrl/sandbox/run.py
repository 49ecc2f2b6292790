"""`run_python`: one sandboxed run of a Python program under every layer this machine allows
(`detect.isolation()`); the parent's side of it is `spawn`."""

from __future__ import annotations

from .detect import isolation
from .records import Execution, Limits
from .spawn import _execute


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
