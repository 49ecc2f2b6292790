"""Start-up checks of a run's settings that look beyond the values themselves: at the machine
(is the device there?) and at the file system (is model.path a directory?); the rewards' own
(are they known, and do they take the settings given?) are `rewards.settings.reward_problems`.
Each returns the problems found, as messages that say what to change;
`thinkrl.config.validate` gathers them. `ConfigError` is the error of a configuration that
cannot run, here so that every layer may raise it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


def suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"


def device_problems(name: str, where: str = "model.device") -> list[str]:
    """A device that is not one, or is not on this machine (cuda without a GPU)."""
    if name == "auto":
        return []
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        return [f"{where} {name!r} is not a device; use auto, cpu, cuda or cuda:N"]
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return [f"{where}={name} but this machine has no CUDA GPU that torch can use; set {where}=auto "
                    "(the GPU when there is one, else the CPU) or cpu"]
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return [f"{where}={name} but this machine has {torch.cuda.device_count()} GPU(s) (cuda:0 ...); "
                    f"choose one of them or set {where}=auto"]
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        return [f"{where}={name} but MPS is not available here; set {where}=auto or cpu"]
    elif dev.type not in ("cpu", "cuda", "mps"):
        return [f"{where} {name!r}: thinkrl runs on cpu or cuda; set {where}=auto"]
    return []


def model_path_problems(path: str | None, where: str = "model.path") -> list[str]:
    """A model given as a local path (absolute, ./, ../ or ~) that is not a directory. A hub
    id (org/name) cannot be told from a relative path without the network: the loader names
    it if it fails."""
    if not path or path in ("embedded", "embedded-student") or "${" in path:
        return []
    local = os.path.isabs(path) or path.startswith(("./", "../", "~", ".\\")) or path in (".", "..")
    p = Path(path).expanduser()
    if local and not p.is_dir():
        why = "is a file, not a model directory" if p.exists() else "does not exist"
        return [f"{where} {path!r} {why}; give a model directory (with config.json), 'embedded', or a hub id "
                "such as Qwen/Qwen2.5-0.5B"]
    return []
