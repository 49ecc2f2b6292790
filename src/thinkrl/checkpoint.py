"""Checkpoints in Hugging Face format plus the trainer state, written atomically.

Layout: RUN/checkpoints/step_000050/{model.safetensors, config.json, tokenizer files,
trainer_state.pt, MANIFEST.json}. A checkpoint is written under a temporary name, flushed,
given a manifest of sizes and SHA-256 sums, then renamed into place; only then are older
ones deleted. A directory without a valid manifest is never resumed from. A write that fails
(disk full) removes its temporary directory and raises; the previous checkpoints are intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

MANIFEST = "MANIFEST.json"
REQUIRED = ("config.json", "trainer_state.pt")  # and the weights: model.safetensors or its index


class CheckpointError(OSError):
    """A checkpoint could not be written (disk full, quota, I/O error, or a writer library's own
    error on such a failure); nothing of it is left behind and the older checkpoints are intact."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_model(model, tokenizer, directory: Path, model_state: dict | None = None) -> None:
    """A model and its tokenizer in Hugging Face format into `directory` (every model file a
    checkpoint or a final save holds). `model_state`: the full state dict to write instead of the
    model's own (a sharded model's, gathered by every process)."""
    model.save_pretrained(directory, safe_serialization=True, state_dict=model_state)
    tokenizer.save_pretrained(directory)


def _files(directory: Path) -> list[Path]:
    """Every file under `directory`, subdirectories included, in a fixed order."""
    return sorted(p for p in directory.rglob("*") if p.is_file())


def save_checkpoint(root: Path, step: int, model, tokenizer, state: dict, keep: int = 2,
                    model_state: dict | None = None, move_in: dict[str, Path] | None = None) -> Path:
    """Write step `step`'s checkpoint under `root` atomically and keep the newest `keep`.
    `model_state`: see `write_model`. `move_in`: {name: path} of files or directories written
    beforehand (a sharded optimizer state every process wrote) moved into the checkpoint
    before its manifest, so that they are covered by it and renamed into place with it."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        write_model(model, tokenizer, tmp, model_state)
        torch.save(state, tmp / "trainer_state.pt")
        for name, path in (move_in or {}).items():
            os.replace(path, tmp / name)
        files = {}
        for p in _files(tmp):
            with p.open("rb") as f:
                os.fsync(f.fileno())
            files[p.relative_to(tmp).as_posix()] = {"size": p.stat().st_size, "sha256": _sha256(p)}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
        for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            _fsync_dir(d)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written checkpoint is never left to fill the disk
        # safetensors and torch report a full disk as their own errors, not OSError: one type for all
        raise CheckpointError(f"{type(e).__name__}: {e}" + _free_space(root)) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{e}{_free_space(root)}") from e
    done = list_checkpoints(root)
    # steps beyond this one are a future this run no longer has (a resume skipped them as broken)
    for old in [c for c in done if step_of(c) > step] + [c for c in done if step_of(c) <= step][:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _free_space(root: Path) -> str:
    try:
        return f" ({shutil.disk_usage(root).free / 2 ** 20:.0f} MB free on that filesystem)"
    except OSError:
        return ""


def step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("_")[1])


def nonfinite_parameters(model) -> list[str]:
    """Names of the parameters holding NaN or inf (a checkpoint of them would be useless)."""
    return [n for n, p in model.named_parameters() if not torch.isfinite(p.detach()).all()]


def is_complete(ckpt: Path) -> bool:
    """The manifest lists every file of the checkpoint (the required ones among them) and each
    has the listed size."""
    try:
        files = json.loads((ckpt / MANIFEST).read_text())["files"]
        present = {p.relative_to(ckpt).as_posix() for p in _files(ckpt)} - {MANIFEST}
        weights = "model.safetensors" in files or "model.safetensors.index.json" in files
        if set(files) != present or not weights or any(n not in files for n in REQUIRED):
            return False
        return all((ckpt / n).stat().st_size == f["size"] for n, f in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def verify(ckpt: Path) -> bool:
    """Full check: sizes and checksums."""
    if not is_complete(ckpt):
        return False
    manifest = json.loads((ckpt / MANIFEST).read_text())
    return all(_sha256(ckpt / n) == f["sha256"] for n, f in manifest["files"].items())


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.exists():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit() and is_complete(p)]
    return sorted(found, key=step_of)


def find_resumable(root: Path) -> tuple[Path | None, str]:
    """(the newest intact checkpoint, "") or (None, what is wrong when checkpoints exist but none
    is intact) or (None, "") when the run wrote none."""
    found = latest_checkpoint(root)
    if found is not None or not root.is_dir():
        return found, ""
    dirs = sorted(p.name for p in root.glob("step_*") if p.is_dir())
    return None, (f"{len(dirs)} checkpoint(s) fail their manifest check: {', '.join(dirs)}" if dirs else "")


def latest_checkpoint(root: Path) -> Path | None:
    for ckpt in reversed(list_checkpoints(root)):
        if verify(ckpt):
            return ckpt
    return None


def load_trainer_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)


def load_weights(model, ckpt: Path) -> None:
    """Load a checkpoint's weights (one safetensors file or an index of shards) into `model`."""
    from safetensors.torch import load_file

    index = ckpt / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    state = {}
    for name in files:
        state.update(load_file(str(ckpt / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k and getattr(model.config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise ValueError(f"{ckpt}: weights do not match the model (missing {sorted(set(missing) - tied)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]})")
