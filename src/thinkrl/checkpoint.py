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


def save_checkpoint(root: Path, step: int, model, tokenizer, state: dict, keep: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / "trainer_state.pt")
        files = {}
        for p in sorted(tmp.iterdir()):
            with p.open("rb") as f:
                os.fsync(f.fileno())
            files[p.name] = {"size": p.stat().st_size, "sha256": _sha256(p)}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written checkpoint is never left to fill the disk
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def is_complete(ckpt: Path) -> bool:
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        return all((ckpt / n).stat().st_size == f["size"] for n, f in manifest["files"].items())
    except (OSError, ValueError, KeyError):
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
    found = [p for p in root.glob("step_*") if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


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
        raise RuntimeError(f"{ckpt}: weights do not match the model (missing {sorted(set(missing) - tied)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]})")
