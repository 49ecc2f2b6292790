"""The interface between the trainer and whatever generates rollouts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class SamplingParams:
    n: int = 1  # samples per prompt (the group size G during training)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 48
    stop: list[str] = field(default_factory=list)  # stop after any of these strings (kept in the output)


@dataclass
class Rollouts:
    """Completions laid out prompt after prompt, n per prompt (a group is contiguous).

    logprobs[i][t] is log π(token | prefix) under the sampling distribution's logits
    (logits / temperature, before top-p / top-k truncation): the same quantity the trainer
    computes, so it can stand for π_old.
    """

    prompt_ids: list[list[int]]  # one per completion
    group_ids: list[int]  # the index of the prompt (in the call) each completion was sampled for
    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    texts: list[str]
    finish_reasons: list[str]  # "stop" (EOS or a stop string) or "length"

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)

    @classmethod
    def concat(cls, parts: list["Rollouts"]) -> "Rollouts":
        """Rollouts of several calls as one, in order; group ids renumbered to stay distinct."""
        out = cls([], [], [], [], [], [])
        for part in parts:
            base = max(out.group_ids, default=-1) + 1
            out.prompt_ids += part.prompt_ids
            out.group_ids += [base + g for g in part.group_ids]
            out.completion_ids += part.completion_ids
            out.logprobs += part.logprobs
            out.texts += part.texts
            out.finish_reasons += part.finish_reasons
        return out


@dataclass
class Pending:
    """A generation `RolloutEngine.submit` started: `result` once done (an engine in the caller's
    process finishes it at once), or an engine's own `handle` to wait on."""

    result: Rollouts | None = None
    handle: object = None


class RolloutEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, generator: torch.Generator | None = None) -> Rollouts:
        """Sample params.n completions for each prompt."""

    def submit(self, prompt_ids: list[list[int]], params: SamplingParams,
               generator: torch.Generator | None = None) -> Pending:
        """Start sampling (asynchronous rollouts: it may run while the trainer updates); the
        weights are those of the last `sync_weights` before it."""

    def wait(self, pending: Pending) -> Rollouts:
        """The Rollouts of a submitted generation, once done."""

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights (a no-op when it shares them)."""
