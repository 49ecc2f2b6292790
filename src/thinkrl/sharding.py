"""Sharded data parallelism (`train.parallel: fsdp`): PyTorch's FSDP2 (`fully_shard`) over the
processes torchrun starts, gloo on CPU and nccl on GPU (`thinkrl.distributed.init`).

Each process keeps 1/W of every parameter, of its gradient and of the optimizer state; a layer's
parameters are gathered for its forward and backward and freed after. The trainer's code is the
one of plain data parallelism (`thinkrl.distributed`) with four differences, all here:

- gradients are summed, never averaged: each process's loss is already its part of the whole
  batch's sum over the whole batch's normaliser (`sum_gradients_with_fsdp`), so the
  reduce-scatter sums (`set_gradient_divide_factor(1)`, sum-only collectives, which gloo needs);
- sampling gathers the whole model once on every process (`gathered`) and keeps it for the
  rollout or the held-out evaluation: a generation's number of forward passes differs between
  processes, so per-forward collectives would not line up; training then frees it again;
- a checkpoint holds the model as one Hugging Face directory (the full state dict gathered to
  rank 0, `full_state_dict`) and the optimizer state sharded, one file per process, through
  `torch.distributed.checkpoint` (`save_optimizer`), keyed by parameter name, so a run resumes
  with another number of processes (`load_optimizer` reshards it);
- the checks that read every weight (NaN/inf, the final checksum) read each process's shard.

One process with `train.parallel: fsdp` is the plain single-process model (there is nothing to
shard) with the checkpoint format of the sharded run, so a run can move between 1 and N.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import torch

from . import distributed


def layers_of(model) -> list[torch.nn.Module]:
    """The model's repeated blocks (each sharded as one unit): the modules whose class the model
    names in `_no_split_modules` (transformers' decoder layers), else none (the root alone)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_model(model, device: torch.device):
    """FSDP2 over the process group: each decoder layer, then the root (embeddings, final norm,
    output layer; tied weights stay one parameter). Gradients are summed over the processes."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for layer in layers_of(model):
        fully_shard(layer)
    fully_shard(model)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sum: each process's loss is its share of the whole batch's
            module.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum
    return model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _fsdp_modules(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model):
    """Inside, every process holds the whole model and a forward runs without collectives (every
    process must enter; then any of them may run any number of forwards, rank 0 alone included).
    A model that is not sharded is left as it is."""
    if model is None or not is_sharded(model):
        yield model
        return
    modules = _fsdp_modules(model)
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield model
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor; a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def full_state_dict(model) -> dict | None:
    """The whole model's state dict on rank 0 (on the CPU), None on the others; every process must
    call it. A model that is not sharded gives None (its own state dict serves)."""
    if model is None or not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if distributed.is_main() else None


def load_full_state(model, state: dict) -> None:
    """Load a whole model's state dict (every process holds it) into a sharded model: each process
    keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    tied = getattr(model.config, "tie_word_embeddings", False)
    state = {k: v for k, v in state.items() if not (tied and k == "lm_head.weight")}
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=not tied))


def save_optimizer(model, optimizer, directory: Path) -> None:
    """The optimizer state, keyed by parameter name, each process writing its shard into
    `directory` (every process must call it; one process writes it whole)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(directory))


def load_optimizer(model, optimizer, directory: Path) -> None:
    """Load `save_optimizer`'s state, written by any number of processes, into this run's shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}  # the layout to fill (state initialised)
    dcp.load(state, checkpoint_id=str(directory), planner=DefaultLoadPlanner(allow_partial_load=True))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def nonfinite_parameters(model) -> list[str]:
    """Names of the parameters holding NaN or inf in any process's shard (every process must call
    it with a sharded model)."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(local(p.detach())).all()]
    if not is_sharded(model):
        return bad
    return sorted({n for part in distributed.gather_objects(bad) for n in part})


def weights_checksum(model) -> str:
    """SHA-256 of the whole model's parameters, as `distributed.weights_checksum` gives for an
    unsharded one (every process must call it; equal on all)."""
    if not is_sharded(model):
        return distributed.weights_checksum(model)
    state = full_state_dict(model)
    digest = None
    if state is not None:
        h = hashlib.sha256()
        for name, _ in model.named_parameters():
            h.update(name.encode())
            h.update(state[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        digest = h.hexdigest()
    return distributed.from_main(digest)


def clip_grad_norm(parameters, max_norm: float) -> float:
    """`torch.nn.utils.clip_grad_norm_` for sharded or plain parameters: the whole model's norm."""
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
