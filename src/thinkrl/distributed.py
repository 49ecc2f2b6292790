"""Data-parallel training over several processes: the same config on one process or many.

Launch::

    thinkrl train --config my.yaml                                        # one process
    torchrun --nproc_per_node N -m thinkrl.cli train --config my.yaml     # N processes, one machine
    torchrun --nnodes M --nproc_per_node N --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m thinkrl.cli train --config my.yaml  # M machines (run on each)

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `init` reads them and joins the process
group: nccl when the model is on CUDA (process k of a machine uses cuda:k), gloo on CPU.
Without torchrun (or with WORLD_SIZE=1) there is no process group and every helper below is
a no-op, so one process runs exactly the code it ran before this module existed.
Across machines the run directory must be on a shared filesystem (rank 0 writes it, every
rank reads the checkpoint on --resume).

What is global and what is local (see `thinkrl.train.grpo`): each process samples and scores
its share of the step's questions (whole groups, so advantages are local); the loss
normaliser, the decision to skip a step, the summed gradients, the optimizer step and the
logged metrics are those of the whole batch.
"""

from __future__ import annotations

import datetime
import hashlib
import os

import torch
import torch.distributed as dist

# Ranks other than 0 wait at a barrier while rank 0 evaluates or writes a checkpoint; a long
# held-out evaluation of a large model must not trip the collective timeout.
TIMEOUT = datetime.timedelta(hours=2)

_device = torch.device("cpu")  # where collectives run: cuda:LOCAL_RANK with nccl, cpu with gloo


def env_rank() -> int:
    """This process's rank as torchrun gives it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def init(device: torch.device) -> torch.device:
    """Join the process group torchrun describes, once; return the device this process uses
    (cuda:LOCAL_RANK for a CUDA device with several processes, else `device`)."""
    global _device
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        _device = device if device.type == "cuda" else torch.device("cpu")
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def shard(items: list) -> list:
    """This process's share of a list every process holds: items rank, rank + W, ..."""
    return items[rank():: world_size()]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes, in place; returns it."""
    if world_size() == 1:
        return tensor
    t = tensor.to(_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if t is not tensor:
        tensor.copy_(t)
    return tensor


def sum_values(values: list[float], dtype=torch.float64) -> list:
    """Python numbers summed element-wise over all processes (unchanged on one process)."""
    if world_size() == 1:
        return list(values)
    return all_reduce_sum(torch.tensor(values, dtype=dtype)).tolist()


def any_true(flag: bool) -> bool:
    """True on every process when it is true on any."""
    return bool(flag) if world_size() == 1 else sum_values([float(bool(flag))])[0] > 0


def sum_gradients(model: torch.nn.Module) -> None:
    """All-reduce (SUM) the gradient of every trainable parameter. A parameter without a
    gradient on this process contributes zeros, so every process makes the same collectives;
    one that has none on any process is left without (as one process would leave it, so the
    optimizer skips it there too)."""
    if world_size() == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    had = all_reduce_sum(torch.tensor([p.grad is not None for p in params], dtype=torch.float32))
    handles = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        handles.append(dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, async_op=True))
    for h in handles:
        h.wait()
    for p, n in zip(params, had.tolist()):
        if n == 0:
            p.grad = None


def gather_objects(obj) -> list:
    """[the object of rank 0, of rank 1, ...] on every process (picklable objects)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def from_main(obj):
    """Rank 0's object, on every process."""
    return gather_objects(obj)[0]


def barrier() -> None:
    if world_size() > 1:
        if _device.type == "cuda":
            dist.barrier(device_ids=[_device.index])
        else:
            dist.barrier()


def weights_checksum(model: torch.nn.Module) -> str:
    """SHA-256 of the parameters' bytes (shared parameters once): equal on every process of a
    correct data-parallel run."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
