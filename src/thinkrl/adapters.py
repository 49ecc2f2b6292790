"""Low-rank adapters (LoRA, through PEFT) on a trained model, and the reference policy they
give without a second copy of the weights.

`model.lora.r > 0` (GRPO's policy, SFT's model, a distillation student) trains only the
adapters: `attach` wraps the loaded model in a PEFT model whose base weights are frozen, so
the optimizer (built over the parameters that require grad) holds the adapters alone.

π_ref with β > 0 is the same model with its adapters off (`AdaptersOff`): the base weights
are the initial policy's, bit for bit, so nothing is loaded twice. π_ref ← π_θ
(objective.ref_reset_every) would have to rewrite those frozen base weights, and then an
adapter checkpoint would no longer apply to the base it names: refused (`lora_problems`).

Saving and loading are `checkpoint.write_model` (the adapter, the tokenizer and, with
`lora.merge`, a merged copy in merged/), `checkpoint.load_weights` (--resume) and
`policy.load_model` (an adapter directory loads as its base with the adapter merged in).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from .sections import LoraSettings

log = logging.getLogger("thinkrl")

ALL_LINEAR = "all-linear"  # PEFT's keyword: every linear layer but the output layer


def lora_on(lora: LoraSettings) -> bool:
    return lora.r > 0


def lora_problems(lora: LoraSettings, where: str, objective=None, parallel: str = "ddp") -> list[str]:
    """The settings' problems, as messages that say what to change. GRPO passes its
    `objective` section (π_ref ← π_θ is refused with adapters; dropout is warned about) and
    its train.parallel (FSDP does not shard adapters here)."""
    errors = []
    if not isinstance(lora.r, int) or lora.r < 0:
        errors.append(f"{where}.r={lora.r}: the adapter rank must be a whole number >= 1 (8-64 is usual), or 0 to "
                      "train every weight")
    if not lora.alpha > 0:
        errors.append(f"{where}.alpha={lora.alpha}: the adapter's scale alpha/r needs alpha > 0 (2r is usual)")
    if not 0 <= lora.dropout < 1:
        errors.append(f"{where}.dropout={lora.dropout}: must be in [0, 1) (0 is usual)")
    names = lora.target_modules
    if not names or not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        errors.append(f"{where}.target_modules={names!r}: give a list of module names (e.g. [q_proj, v_proj]) or "
                      f"[{ALL_LINEAR}]")
    elif ALL_LINEAR in names and len(names) > 1:
        errors.append(f"{where}.target_modules={names}: {ALL_LINEAR} already takes every linear layer; give "
                      f"[{ALL_LINEAR}] alone or list the modules")
    if errors or not lora_on(lora):
        return errors
    if importlib.util.find_spec("peft") is None:
        errors.append(f"{where}.r={lora.r} needs PEFT, which is not installed: pip install 'thinkrl[lora]' (or "
                      f"set {where}.r=0 to train every weight)")
    if objective is not None and objective.ref_reset_every and objective.beta > 0:
        errors.append(f"objective.ref_reset_every={objective.ref_reset_every} with {where}.r={lora.r}: the reference "
                      "is the base model with the adapters off, and moving it to the policy would rewrite the frozen "
                      "base weights; set objective.ref_reset_every=0, or train in stages (lora.merge=true, then a new "
                      "run from the checkpoint's merged/ directory)")
    if parallel == "fsdp":
        errors.append(f"{where}.r={lora.r} with train.parallel=fsdp: sharding adapters is not supported; use "
                      "train.parallel=ddp (the gradients and optimizer state are the adapters' alone, a small part "
                      "of the model)")
    if objective is not None and lora.dropout > 0:
        log.warning("%s.dropout=%g: GRPO's ratio and KL compare forwards of the same weights, which dropout makes "
                    "differ (ratio != 1 before any update); 0 is usual for RL", where, lora.dropout)
    return errors


def base_name(model) -> str:
    """Where the adapter's base model loads from, as adapter_config.json records it: a local
    directory as an absolute path (the embedded model: the installed package's), a hub id as it is."""
    name = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
    return os.path.abspath(name) if name and os.path.isdir(name) else name


def attach(model, lora: LoraSettings):
    """`model` with LoRA adapters on `lora.target_modules` (its own weights frozen), or `model`
    itself when `lora.r` is 0. A new adapter changes nothing yet (its B matrices are zero)."""
    if not lora_on(lora):
        return model
    from peft import LoraConfig, get_peft_model

    from .checkpoint import MERGED_COPY  # deferred: it imports torch, and the config checks above need none

    targets = ALL_LINEAR if lora.target_modules == [ALL_LINEAR] else list(lora.target_modules)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        task_type="CAUSAL_LM")
    name = base_name(model)
    adapted = get_peft_model(model, config)
    adapted.peft_config["default"].base_model_name_or_path = name  # get_peft_model takes the name as loaded
    setattr(adapted, MERGED_COPY, bool(lora.merge))
    n = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    log.info("LoRA r=%d alpha=%g on %s: %d trainable parameters of %d", lora.r, lora.alpha, targets, n,
             sum(p.numel() for p in adapted.parameters()))
    return adapted


class AdaptersOff:
    """π_ref as the policy's own base: calling it runs the adapted model with its adapters
    off (`PeftModel.disable_adapter`), so its log-probs are the base model's exactly and no
    weight is held twice. It holds no parameters of its own. `forward` is the base model's,
    for `policy.cache_kwarg` and the like that read its signature; `modules`, `config` and
    `training` are the adapted model's (the modules its forward runs through). Nothing else
    is passed through: a state_dict of π_ref would be the policy's, so there is none."""

    def __init__(self, model):
        self.model = model

    @property
    def forward(self):
        return self.model.get_base_model().forward

    @property
    def config(self):
        return self.model.config

    @property
    def training(self) -> bool:
        return self.model.training

    def modules(self):
        return self.model.modules()

    def __call__(self, *args, **kwargs):
        with self.model.disable_adapter():
            return self.model(*args, **kwargs)

    def parameters(self):
        return iter(())


def reference(policy, load_copy):
    """π_ref for β > 0: the adapted policy with its adapters off, or `load_copy()` (a second
    copy of the initial weights) when the policy trains every weight."""
    from .checkpoint import is_peft  # deferred: it imports torch

    return AdaptersOff(policy) if is_peft(policy) else load_copy()


def adapter_base(directory: str) -> str | None:
    """The base model an adapter directory (a LoRA run's output: adapter_config.json, no
    config.json) names in adapter_config.json, or None when `directory` is not one."""
    d = Path(directory)
    if not (d / "adapter_config.json").is_file() or (d / "config.json").is_file():
        return None
    base = json.loads((d / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"cannot load the model {directory}: its adapter_config.json names no base model "
                         "(base_model_name_or_path); set it to the base model's directory or hub id")
    return base


def merged_adapter(base, directory: str):
    """`base` with the LoRA adapter of `directory` merged in (a plain model, as
    `policy.load_model` gives it), named after `directory`: an adapter trained on top of it
    records `directory` as its base."""
    try:
        from peft import PeftModel
    except ImportError:
        raise ValueError(f"{directory} holds a LoRA adapter, and loading it needs PEFT: pip install "
                         "'thinkrl[lora]'") from None
    model = PeftModel.from_pretrained(base, directory).merge_and_unload()
    model.name_or_path = model.config._name_or_path = os.path.abspath(directory)
    return model
