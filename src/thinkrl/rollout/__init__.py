"""Rollout engines: who samples the group of completions for each question.

The trainer talks only to `RolloutEngine` (engine.py). `HFEngine` (hf.py) samples with
transformers and a KV cache in the trainer's own process; `RayEngine` (ray_engine.py) spreads
the questions over Ray actors, each with a copy of the policy.
"""

import importlib.util

from .engine import Pending, RolloutEngine, Rollouts, SamplingParams
from .hf import HFEngine
from .ray_engine import RayEngine


def make_engine(name: str, model, tokenizer, device, **options) -> RolloutEngine:
    """The engine that samples from `model`. Every module that samples builds its engine here
    (tests/test_structure.py holds it), so another engine is one change in this package.
    `options` are the Ray engine's (workers, ray_address, ray_num_cpus, model_path, dtype, ...);
    the in-process engine ignores them."""
    if name == "hf":
        return HFEngine(model, tokenizer, device)
    if name == "ray":
        if importlib.util.find_spec("ray") is None:
            raise ValueError("rollout.engine=ray needs Ray, which is not installed: pip install 'thinkrl[ray]' "
                             "(or pip install ray), or use rollout.engine=hf")
        return RayEngine(model, tokenizer, device, **options)
    raise ValueError(f"unknown rollout engine {name!r}; available: hf, ray")


__all__ = ["Pending", "RolloutEngine", "Rollouts", "SamplingParams", "HFEngine", "RayEngine", "make_engine"]
