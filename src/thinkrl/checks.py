"""Start-up checks of a run's settings that look beyond the values themselves: at the machine
(is the device there?), at the file system (is model.path a directory?), and at the rewards
(are they known, and do they take the settings given?). Each returns the problems found, as
messages that say what to change; `thinkrl.config.validate` gathers them.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path


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


def reward_problems(rw, max_new_tokens: int) -> list[str]:
    """`rw`: a RewardsConfig. Unknown rewards, settings of rewards not in the run, settings a
    registered reward does not take or refuses (`rewards.settings`), and length shaping that
    can never apply under the rollout's token budget."""
    from .rewards import REWARDS
    from .rewards.settings import check_settings

    errors = []
    if not rw.weights:
        errors.append("rewards.weights is empty; name at least one reward, e.g. {accuracy: 1.0, format: 1.0}")
    named = {name: "rewards.weights" for name in rw.weights}
    for kind, weights in rw.by_type.items():
        if not weights:
            errors.append(f"rewards.by_type.{kind} is empty; name its rewards, e.g. {{accuracy: 1.0}}")
        named.update({name: f"rewards.by_type.{kind}" for name in weights if name not in named})
    for name, where in named.items():
        if not (name in REWARDS or ":" in name):
            errors.append(f"{where} names unknown reward {name!r}" + suggest(name, sorted(REWARDS))
                          + " (or give an import path package.module:function)")
    bad_settings = set()
    for name, params in rw.params.items():
        if name not in named:
            errors.append(f"rewards.params.{name} sets a reward that is not in rewards.weights or rewards.by_type"
                          + suggest(name, sorted(named)))
        if not isinstance(params, dict):
            errors.append(f"rewards.params.{name} must be a mapping of keyword settings, got {params!r}")
        elif name in REWARDS:  # a user's reward is checked when it is imported, at the start of the run
            found = check_settings(name, REWARDS[name], params, registered=True)
            errors += found
            bad_settings.update([name] if found else [])
    if not rw.timeout_s > 0:
        errors.append("rewards.timeout_s must be > 0 seconds")
    for name in ("overlong", "cosine_length"):  # length shaping must be able to reach the budget
        if name in rw.weights and name in REWARDS and name not in bad_settings:
            limit = rw.params.get(name, {}).get("max_length")
            if limit is None:
                limit = inspect.signature(REWARDS[name]).parameters["max_length"].default
            if limit > max_new_tokens:
                errors.append(f"the {name} reward's max_length is {limit} but completions stop at "
                              f"rollout.max_new_tokens={max_new_tokens}, so its length shaping never applies; set "
                              f"rewards.params.{name}.max_length={max_new_tokens}")
    return errors
