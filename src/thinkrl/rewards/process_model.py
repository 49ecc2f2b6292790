"""A step reward from a trained process reward model (PRM): `thinkrl rm` with
`train.objective=step` (configs/prm-tiny.yaml) makes one; this scores each step of each
completion with the model's sigmoid(score) at the step's last token, a probability in [0, 1]
that the step is right (process supervision, DeepSeekMath §4.1.3).

    objective: {advantage: process}
    rewards:
      step_weights: {process_model: 1.0}
      params:
        process_model: {path: runs/prm/model}

Settings (`rewards.params.process_model`):
- `path` (required): the directory `thinkrl rm` wrote (`OUT/model`) with `train.objective=step`.
- `device` (default `auto`), `batch_size` (default 64 completions per forward).

The steps: the run's split when it gives one (`steps=`, the (start, end) spans; one Step per
span, read at the span's end), else the reward's own, one step per column equation
(`rewards.steps.EQUATION_PATTERN`: `7+5=12`, `4+8+1=13`), ending where the equation ends. A
completion without steps gets none. `prompts` are the questions; the model renders them
with the template it was trained with. The model is loaded once per (directory, device)
and kept (`rewards.model.load_reward_model`); scoring is batched and without gradients.
A step that falls outside the model's context (a very long completion) is not scored (None).
Reasons read "step k: p=0.12" (k counted from 1).
"""

from __future__ import annotations

import math
import re

from .model import load_reward_model
from .steps import EQUATION_PATTERN, Step, step_reward

_EQUATION = re.compile(EQUATION_PATTERN)


def _sigmoid(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(x / 2))  # σ(x), without overflow


@step_reward
def process_model_reward(completions: list[str], *, steps: list[list[tuple[int, int]]] | None = None, prompts=None,
                         path: str | None = None, device: str = "auto", batch_size: int = 64,
                         **kwargs) -> list[list[Step]]:
    """Each step's probability of being right under a trained process reward model."""
    if not path:
        raise ValueError("the process_model reward needs a process reward model: set "
                         "rewards.params.process_model.path to the model directory that `thinkrl rm` wrote with "
                         "train.objective=step (OUT/model)")
    if prompts is None:
        raise ValueError("the process_model reward scores the steps of an answer to its question and needs prompts=")
    if len(prompts) != len(completions):
        raise ValueError(f"the process_model reward got {len(prompts)} prompts for {len(completions)} completions")
    if steps is not None and len(steps) != len(completions):
        raise ValueError(f"the process_model reward got {len(steps)} step lists for {len(completions)} completions")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"rewards.params.process_model.batch_size={batch_size!r} must be an integer >= 1")
    rm = load_reward_model(str(path), device)
    if rm.objective != "step":
        raise ValueError(f"{path} is an outcome reward model (trained with train.objective={rm.objective}); the "
                         f"process_model reward needs one trained with train.objective=step (configs/prm-tiny.yaml), "
                         f"or use it through the reward_model reward")
    if steps is None:
        ends = [[m.end() for m in _EQUATION.finditer(c)] for c in completions]
    else:
        ends = [[end for _, end in spans] for spans in steps]
    raw = rm.score_steps([str(p) for p in prompts], list(completions), ends, batch_size)
    out = []
    for row_ends, row in zip(ends, raw):
        scored = []
        for k, (end, r) in enumerate(zip(row_ends, row), start=1):
            if r is None:
                scored.append(Step(end, None, f"step {k}: outside the model's context"))
            else:
                p = _sigmoid(r)
                scored.append(Step(end, p, f"step {k}: p={p:.2f}"))
        out.append(scored)
    return out
