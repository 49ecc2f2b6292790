"""Checkpoints in Hugging Face format plus the trainer state, written atomically.

Layout: RUN/checkpoints/step_000050/{model.safetensors, config.json, tokenizer files,
trainer_state.pt, MANIFEST.json}. A checkpoint is written under a temporary name, flushed,
given a manifest of sizes and SHA-256 sums, then renamed into place; only then are older
ones deleted. A directory without a valid manifest is never resumed from. A write that fails
(disk full) removes its temporary directory and raises; the previous checkpoints are intact.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch

MANIFEST = "MANIFEST.json"
REQUIRED = ("config.json", "trainer_state.pt")  # and the weights: model.safetensors or its index
ADAPTER_REQUIRED = ("adapter_config.json", "adapter_model.safetensors", "trainer_state.pt")  # a LoRA run's


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


MERGED_COPY = "thinkrl_write_merged"  # set on a PEFT model (`adapters.attach`): also write merged/
MERGED_DIR = "merged"


def is_peft(model) -> bool:
    """Whether `model` is a PEFT model (LoRA adapters on a base); never imports PEFT."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def write_model(model, tokenizer, directory: Path, model_state: dict | None = None) -> None:
    """A model and its tokenizer in Hugging Face format into `directory` (every model file a
    checkpoint or a final save holds). `model_state`: the full state dict to write instead of the
    model's own (a sharded model's, gathered by every process).

    A PEFT model writes its adapter (adapter_config.json, adapter_model.safetensors: loadable by
    `PeftModel.from_pretrained` over the base it names) and, when `adapters.attach` marked it
    (lora.merge), merged/: a copy with the adapter merged in, a plain model with its tokenizer
    (the training model itself is never merged)."""
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True, state_dict=model_state)
    tokenizer.save_pretrained(directory)
    if is_peft(model) and getattr(model, MERGED_COPY, False):
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(directory / MERGED_DIR, safe_serialization=True)
        tokenizer.save_pretrained(directory / MERGED_DIR)
        del merged


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
        whole = weights and all(n in files for n in REQUIRED)
        adapter = all(n in files for n in ADAPTER_REQUIRED)  # a LoRA run's: the adapter, not the base
        if set(files) != present or not (whole or adapter):
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


def read_weights(directory: Path) -> dict:
    """A Hugging Face directory's weights (one safetensors file or an index of shards)."""
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [
        "model.safetensors"]
    state = {}
    for name in files:
        state.update(load_file(str(directory / name)))
    return state


def load_weights(model, ckpt: Path) -> None:
    """Load a checkpoint's weights (one safetensors file or an index of shards) into `model`; a
    PEFT model's checkpoint holds its adapter alone (`_load_adapter`)."""
    from safetensors.torch import load_file

    adapter = (ckpt / "adapter_model.safetensors").exists()
    if is_peft(model) or adapter:
        if not (is_peft(model) and adapter):
            held, wanted = ("a LoRA adapter", "every weight") if adapter else ("every weight", "a LoRA adapter")
            raise ValueError(f"{ckpt} holds {held} but this run trains {wanted}: resume with the run's own "
                             "model.lora settings")
        _load_adapter(model, ckpt, load_file(str(ckpt / "adapter_model.safetensors")))
        return
    missing, unexpected = model.load_state_dict(read_weights(ckpt), strict=False)
    tied = {k for k in missing if "lm_head" in k and getattr(model.config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise ValueError(f"{ckpt}: weights do not match the model (missing {sorted(set(missing) - tied)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]})")


def _load_adapter(model, ckpt: Path, state: dict) -> None:
    """Load a checkpoint's adapter weights into a PEFT model; a checkpoint of other adapter
    settings (rank, alpha, target modules) is refused, naming what differs."""
    from peft import set_peft_model_state_dict

    saved = json.loads((ckpt / "adapter_config.json").read_text())
    mine = model.peft_config["default"].to_dict()
    differ = [f"{k} {saved.get(k)!r} there, {mine.get(k)!r} here" for k in ("r", "lora_alpha", "target_modules")
              if _comparable(saved.get(k)) != _comparable(mine.get(k))]
    if differ:
        raise ValueError(f"{ckpt}: its adapter does not match this run's ({'; '.join(differ)}); resume with the "
                         "run's own model.lora settings")
    try:
        result = set_peft_model_state_dict(model, state)
    except RuntimeError as e:  # a tensor of another shape
        raise ValueError(f"{ckpt}: its adapter weights do not fit this model: {str(e).splitlines()[0]}") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"{ckpt}: adapter weights do not match the model (missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(result.unexpected_keys)[:5]})")


def _comparable(value):
    return sorted(value) if isinstance(value, (list, set, tuple)) else value


def save_pretrained(model, tokenizer, directory: Path, extra: dict[str, str] | None = None,
                    model_state: dict | None = None) -> None:
    """A model's final save in Hugging Face format (plus `extra` text files), atomically: written
    under a temporary name, then renamed over `directory`, so a crash leaves the old one whole or
    the new one whole, never half of either. `model_state`: see `checkpoint.write_model`."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_model(model, tokenizer, tmp, model_state)
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
