"""The reward contract, and rewards that explain their scores.

A reward is a plain callable (TRL's contract):

    f(completions: list[str], *, prompts: list[str] | None = None, **columns) -> list[float | None]

- `completions`: the generated texts, one per sample.
- `prompts`: the question of each sample (the dataset's question column).
- `completion_lengths`: each completion's length in tokens, when the caller knows it (the
  trainer and the evaluator do; `thinkrl score` does not).
- every other dataset column arrives as a keyword argument of the same name, a list aligned
  with `completions` (`answer=`, `tests=`, `level=`, ...).
- a reward's own settings (`rewards.params.<name>` in the config) arrive as keyword
  arguments too. Name them as parameters: they are checked at start against the signature
  (`rewards.settings`; a setting a reward does not name is refused, unless it is a user's
  reward that takes `**kwargs`), and the registered rewards refuse impossible values there.
- A reward must accept and ignore keywords it does not use (`**kwargs`).
- It returns one value per completion: a float, or None for "not applicable" (the reference
  cannot be parsed, the row is not of this reward's kind). None is never counted as a reward.

Rewards written here also say *why* a value is not full marks: they are made with
`@explained` from a function returning `Scored(value, reason)` per sample. Calling them gives
the plain values; `.scores(...)` gives the `Scored` pairs (what `thinkrl score` writes).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple


class Scored(NamedTuple):
    value: float | None
    reason: str = ""  # why it is not full marks (or why None); "" when nothing is to be said


class ExplainedReward:
    """A reward made from a function returning `list[Scored]`."""

    def __init__(self, scores_fn: Callable[..., list[Scored]]):
        self._scores = scores_fn
        functools.update_wrapper(self, scores_fn)

    def scores(self, completions: list[str], **kwargs) -> list[Scored]:
        out = [s if isinstance(s, Scored) else Scored(*s) for s in self._scores(completions, **kwargs)]
        if len(out) != len(completions):
            raise ValueError(f"{self.__name__} returned {len(out)} scores for {len(completions)} completions")
        return out

    def __call__(self, completions: list[str], **kwargs) -> list[float | None]:
        return [s.value for s in self.scores(completions, **kwargs)]

    def __repr__(self):
        return f"<reward {self.__module__}.{self.__name__}>"


def explained(scores_fn: Callable[..., list[Scored]]) -> ExplainedReward:
    """Decorator: a reward from a function that returns one `Scored(value, reason)` per
    completion."""
    return ExplainedReward(scores_fn)


def scores_of(reward: Callable, completions: list[str], **kwargs) -> list[Scored]:
    """Values with reasons from any reward: its own reasons where it gives them, else a
    generic one for a zero or a None."""
    if isinstance(reward, ExplainedReward):
        return reward.scores(completions, **kwargs)
    values = list(reward(completions, **kwargs))
    if len(values) != len(completions):
        raise ValueError(f"returned {len(values)} values for {len(completions)} completions")
    return [Scored(None if v is None else float(v),
                   "not applicable" if v is None else ("scored 0" if float(v) == 0.0 else ""))
            for v in values]
