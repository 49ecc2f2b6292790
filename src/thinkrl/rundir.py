"""A run directory belongs to one run.

Every command that writes a run (`zero`, `train`, `sft`, `rm`, `distill`) claims its
directory here before it writes anything:

- A new run gets a new directory: `--out DIR` that does not exist or is empty, or by default
  `runs/<prefix>YYYYmmdd-HHMMSS-XXXX` (a random suffix, created with an exclusive mkdir, so
  two runs started in the same second never share one).
- A directory that already holds files is refused unless the run continues it (`--resume`)
  or replaces it (`--overwrite`). `--overwrite` empties a directory only when it is a thinkrl
  run (it carries the `.thinkrl-run` marker, or a config.yaml and metrics.jsonl of an older
  thinkrl); a run only ever claims an empty directory, so everything in one is its own.
  Anything else is never deleted.
- While a run works, its directory is locked (an exclusive `flock` on `.lock`, released by
  the kernel when the process ends, however it ends): a second run into the same directory,
  `--resume` included, is refused and told who holds it.

Errors are `RunDirError`s whose message says what to do.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path

MARKER = ".thinkrl-run"
LOCK = ".lock"


class RunDirError(Exception):
    """The run directory cannot be used; the message says why and what to do instead."""


def is_run_dir(path: Path) -> bool:
    """Is `path` a thinkrl run directory (one this project wrote)?"""
    return (path / MARKER).is_file() or ((path / "config.yaml").is_file() and (path / "metrics.jsonl").is_file())


def latest_run(root: Path, prefix: str = "") -> Path | None:
    """The newest run directory under `root` whose name starts with `prefix` (by its start time)."""
    if not root.is_dir():
        return None
    runs = [p for p in root.glob(f"{prefix}*") if p.is_dir() and is_run_dir(p)]

    def started(p: Path) -> float:
        return ((p / MARKER) if (p / MARKER).exists() else (p / "config.yaml")).stat().st_mtime

    return max(runs, key=started) if runs else None


class RunDir:
    """A claimed run directory: `path`, and the lock held until `release()` or process exit."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock(path: Path) -> int:
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise RunDirError(f"cannot write to the run directory {path} ({e.strerror}); choose another --out") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunDirError(f"{path} is in use by another run ({holder}); wait for it to end, or choose another "
                          f"--out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def _mark(path: Path, command: str) -> None:
    info = {"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid(),
            "host": socket.gethostname()}
    write_text_atomic(path / MARKER, json.dumps(info) + "\n")


def _empty(path: Path, ignore: set[str]) -> bool:
    return not [p for p in path.iterdir() if p.name not in ignore]


def _new_default(root: Path, prefix: str) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create {root} ({e.strerror}); give --out DIR") from e
    for _ in range(100):
        path = root / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        try:
            path.mkdir()  # exclusive: a name another run took raises
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise RunDirError(f"cannot create {path} ({e.strerror}); give --out DIR") from e
    raise RunDirError(f"could not find a free run name under {root}; give --out DIR")


def claim(out: str | Path | None, *, resume: bool = False, overwrite: bool = False, command: str = "run",
          root: str | Path = "runs", prefix: str = "") -> RunDir:
    """Claim the directory of a new run (`out`, or a fresh default under `root`) or of the run to
    continue (`resume`: `out`, or the newest run under `root` named `prefix`*). Raises RunDirError."""
    if resume and overwrite:
        raise RunDirError("--resume continues a run and --overwrite replaces it; give one of them")
    root = Path(root)
    if out is None:
        if resume:
            found = latest_run(root, prefix)
            if found is None:
                raise RunDirError(f"--resume: no run under {root}/ to resume; give --out DIR")
            path = found
        else:
            path = _new_default(root, prefix)
    else:
        path = Path(out)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a directory; choose another --out")
    if resume:
        if not path.is_dir() or not is_run_dir(path):
            raise RunDirError(f"--resume: {path} holds no thinkrl run to continue; start one there without --resume")
        rd = RunDir(path, _lock(path))
        return rd
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create the run directory {path} ({e.strerror}); choose another --out") from e
    fd = _lock(path)
    try:
        if not _empty(path, {LOCK, MARKER}):  # a run that failed to start leaves only these
            if not overwrite:
                what = "an earlier run" if is_run_dir(path) else "files that are not a thinkrl run"
                raise RunDirError(
                    f"{path} already holds {what}; continue that run with --resume, choose another --out"
                    + (", or replace it with --overwrite" if is_run_dir(path) else ""))
            if not is_run_dir(path):
                raise RunDirError(f"--overwrite: {path} is not a thinkrl run directory, and thinkrl never deletes "
                                  f"what it did not write; choose another --out")
            for p in path.iterdir():
                if p.name != LOCK:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        _mark(path, command)
    except OSError as e:
        os.close(fd)
        raise RunDirError(f"cannot write to the run directory {path} ({e}); choose another --out") from e
    except RunDirError:
        os.close(fd)
        raise
    return RunDir(path, fd)


def run_claimed(command: str, args, body) -> int:
    """`thinkrl COMMAND`: claim `args.out` (with `args.resume`, `args.overwrite`; default a new
    runs/COMMAND-TIME-XXXX), then `body(args, run_dir, config)` with the directory locked, where
    `config` is `args.config`, or on --resume the run's own config.yaml. A refusal is one line
    on stderr and exit code 2."""
    resume = getattr(args, "resume", False)
    try:
        run_dir = claim(args.out, resume=resume, overwrite=args.overwrite, command=command, prefix=f"{command}-")
    except RunDirError as e:
        print(f"thinkrl {command}: {e}", file=sys.stderr)
        return 2
    config = args.config
    if config is None and resume and (run_dir.path / "config.yaml").exists():
        config = str(run_dir.path / "config.yaml")  # continue with the settings the run started with
    with run_dir:
        return body(args, run_dir.path, config)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: a reader (or a crash) sees the old file or the new."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
