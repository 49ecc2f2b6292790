"""Rollout engines: who samples the group of completions for each question.

The trainer talks only to `RolloutEngine` (engine.py). `HFEngine` (hf.py) samples with
transformers and a KV cache in the trainer's own process; a vLLM engine or remote Ray
workers implement the same two methods.
"""

from .engine import Pending, RolloutEngine, Rollouts, SamplingParams
from .hf import HFEngine


def make_engine(name: str, model, tokenizer, device) -> RolloutEngine:
    """The engine that samples from `model`. Every module that samples builds its engine here
    (tests/test_structure.py holds it), so another engine is one change in this package."""
    if name == "hf":
        return HFEngine(model, tokenizer, device)
    raise ValueError(f"unknown rollout engine {name!r}; available: hf")


__all__ = ["Pending", "RolloutEngine", "Rollouts", "SamplingParams", "HFEngine", "make_engine"]
