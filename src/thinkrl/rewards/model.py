"""Rewards from trained reward models (DeepSeek-R1 stage 4, docs/R1-PIPELINE.md): on general
prompts, helpfulness judged on the final summary only, harmlessness on the whole response,
reasoning included. The models are made by `thinkrl rm` (`thinkrl.train.reward_model`) and loaded by
`rewards.scorer`.

    rewards:
      weights: {accuracy: 1.0, format: 1.0, helpfulness: 1.0, harmlessness: 1.0}
      params:
        helpfulness: {model: runs/rm-helpful/model}
        harmlessness: {model: runs/rm-harmless/model}

| reward | part scored by default | |
| --- | --- | --- |
| `reward_model` | the part the model was trained on | any reward model |
| `helpfulness` | `summary`: the text after the last `</think>` | |
| `harmlessness` | `whole`: the response, reasoning included | |

Settings (`rewards.params.<name>`):
- `model` (required): the directory `thinkrl rm` wrote (`OUT/model`).
- `part`: `whole` | `summary`; overrides the default above.
- `squash`: `sigmoid` (default): σ(r − c), where c, stored with the model, is the mean
  score of its training responses (chosen and rejected alike), so a typical good response
  scores near 1, a typical bad one near 0, on the scale of the rule rewards it is summed
  with; `none`: the raw Bradley-Terry score r (only differences of r mean anything).
- `applies_to` (default `general`): when the rows have a `type` column, only rows of this
  type are scored and the others get None ("not applicable"), so reasoning prompts in the
  same batch stay with the rule rewards; `null` scores every row.
- `device` (default `auto`), `batch_size` (default 64).

`prompts` are the questions (the trainer passes `row["question"]`); the model renders them
with the template it was trained with. Models are loaded once per (directory, device) and
kept; scoring is batched and without gradients.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

from .base import Scored, explained

_CACHE: dict[tuple[str, str], object] = {}
_LOCK = threading.Lock()


def load_reward_model(path: str, device: str = "auto"):
    """The `RewardModel` in `path` on `device`, loaded once and kept."""
    from ..policy import resolve_device  # deferred, with .scorer: they import torch
    from .scorer import RewardModel

    dev = str(resolve_device(device))
    key = (str(Path(path).resolve()), dev)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = RewardModel.from_dir(path, dev)
        return _CACHE[key]


def _score(name: str, completions: list[str], prompts, model, part, squash: str, applies_to, device: str,
           batch_size: int, types) -> list[Scored]:
    if not model:
        raise ValueError(f"the {name} reward needs a reward model: set rewards.params.{name}.model to the model "
                         f"directory that `thinkrl rm` wrote (OUT/model)")
    if prompts is None:
        raise ValueError(f"the {name} reward scores a response to its question and needs prompts=")
    if len(prompts) != len(completions):
        raise ValueError(f"the {name} reward got {len(prompts)} prompts for {len(completions)} completions")
    if squash not in ("sigmoid", "none"):
        raise ValueError(f"rewards.params.{name}.squash={squash!r}: use sigmoid or none")
    if part is not None and part not in ("whole", "summary"):
        raise ValueError(f"rewards.params.{name}.part={part!r}: use whole or summary")
    rm = load_reward_model(str(model), device)
    todo = [i for i in range(len(completions))
            if applies_to is None or types is None or types[i] == applies_to]
    raw = rm.score([str(prompts[i]) for i in todo], [completions[i] for i in todo], batch_size, part=part)
    out = [Scored(None, f"not applicable: row type is not {applies_to!r}")] * len(completions)
    for i, r in zip(todo, raw):
        v = 0.5 * (1.0 + math.tanh((r - rm.center) / 2)) if squash == "sigmoid" else r  # σ, without overflow
        out[i] = Scored(v, f"{name} model score {r:.3f}")
    return out


@explained
def reward_model_reward(completions: list[str], *, prompts=None, model: str | None = None, part: str | None = None,
                        squash: str = "sigmoid", applies_to: str | None = "general", device: str = "auto",
                        batch_size: int = 64, **kwargs) -> list[Scored]:
    """A trained reward model's score, on the part it was trained on unless `part` is given."""
    return _score("reward_model", completions, prompts, model, part, squash, applies_to, device, batch_size,
                  kwargs.get("type"))


@explained
def helpfulness_reward(completions: list[str], *, prompts=None, model: str | None = None, part: str = "summary",
                       squash: str = "sigmoid", applies_to: str | None = "general", device: str = "auto",
                       batch_size: int = 64, **kwargs) -> list[Scored]:
    """Helpfulness, judged on the final summary only (R1 stage 4)."""
    return _score("helpfulness", completions, prompts, model, part, squash, applies_to, device, batch_size,
                  kwargs.get("type"))


@explained
def harmlessness_reward(completions: list[str], *, prompts=None, model: str | None = None, part: str = "whole",
                        squash: str = "sigmoid", applies_to: str | None = "general", device: str = "auto",
                        batch_size: int = 64, **kwargs) -> list[Scored]:
    """Harmlessness, judged on the whole response, reasoning included (R1 stage 4)."""
    return _score("harmlessness", completions, prompts, model, part, squash, applies_to, device, batch_size,
                  kwargs.get("type"))
