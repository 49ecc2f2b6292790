"""Step rewards: a score for each reasoning step of a completion, for process supervision
(DeepSeekMath §4.1.3: `objective.advantage: process`, rewards named in `rewards.step_weights`).

The contract
------------
A step is a piece of a completion ending at a character offset:

    class Step(NamedTuple): end: int; score: float | None; reason: str = ""

`end` is exclusive: step j is `completion[end_{j-1}:end_j]`, the first starting at 0. Ends are
strictly increasing, each in 1..len(completion); characters after the last end belong to no
scored step (in the advantage, the trainer credits their tokens with the last step's: see
`objective.process_advantages`). `score` None means "this step is not scored", and it counts
as no step. `reason` says why a score is not full marks (or why None); "" when nothing is to
be said.

A step reward is a callable, marked with the `@step_reward` decorator (attribute
`kind = "step"`; `is_step_reward(fn)` tells):

    f(completions: list[str], *, steps: list[list[tuple[int, int]]] | None = None,
      prompts=None, **columns) -> list[list[Step]]

one list of Steps per completion. Dataset columns and the reward's own settings
(`rewards.params.NAME`) arrive as keywords, as for outcome rewards (`rewards.base`), so it
must accept **kwargs. When the run splits steps itself (`rewards.step_split` is a regex,
`split_steps`), `steps` holds for each completion the (start, end) spans of its steps and the
reward returns one Step per span with `end` equal to the span's end. When `steps` is None the
reward splits the completion its own way (the embedded task's `column_steps`: one step per
column equation, `EQUATION_PATTERN`). Step rewards are registered by name in `rewards.REWARDS`
beside the outcome rewards; a user's is named by import path `package.module:function`.

Running them (`WeightedStepRewards`)
------------------------------------
A reward that raises, runs past `timeout_s`, or returns the wrong number of lists has the batch
counted in `.errors[name]` and logged; a completion whose steps break the contract (ends not
strictly increasing or out of range, a score that is not a number, or with a split, ends that
are not the spans' ends) is counted there too, on its own. What a failure scores: with a split,
each span scores `on_error` (None: unscored); with the reward's own split the completion gets
no steps. A NaN or inf score is counted in `.nonfinite[name]` (per call) and kept as None.

Several step rewards are summed step by step, weighted, which needs the same steps for all of
them: a shared `rewards.step_split`. With the rewards' own split (`""`) only one step reward may
be used. A None adds nothing; a step that no reward scores is dropped.
"""

from __future__ import annotations

import logging
import math
import re
from numbers import Real
from typing import Callable, NamedTuple

from ..checks import suggest
from .combine import run_reward

log = logging.getLogger("thinkrl.rewards")

# one column step of the embedded task: `7+5=12`, `4+8+1=13`
EQUATION_PATTERN = r"\d+(?:\+\d+)+=\d+"


class Step(NamedTuple):
    end: int  # character offset in the completion, exclusive
    score: float | None  # None: this step is not scored
    reason: str = ""


def step_reward(fn: Callable) -> Callable:
    """Decorator: marks `fn` as a step reward (see the module docstring for its contract)."""
    fn.kind = "step"
    return fn


def is_step_reward(fn) -> bool:
    return getattr(fn, "kind", None) == "step"


def split_steps(text: str, pattern: str | re.Pattern) -> list[tuple[int, int]]:
    """The steps of `text` with `pattern` as the separator, as (start, end) character spans.

    The pieces are the text before the first match, between consecutive matches, and after the
    last; each is trimmed of leading and trailing whitespace, so that its end falls just after
    its last visible character (the step's last token carries its reward), and an empty or
    whitespace-only piece is dropped. A match may be empty (a lookahead such as `(?=Step )`
    cuts before each "Step "). Separators and the whitespace around them lie in no span: by
    the Step contract (step j is `text[end_{j-1}:end_j]`) they fall to the next step.

    >>> split_steps("a\\n\\nbb \\n\\n\\n\\n c", r"\\n\\n")
    [(0, 1), (3, 5), (11, 12)]
    """
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    cuts = [(m.start(), m.end()) for m in rx.finditer(text)]
    bounds = zip([0] + [e for _, e in cuts], [s for s, _ in cuts] + [len(text)])
    spans = []
    for start, end in bounds:
        piece = text[start:end]
        if piece.strip():
            spans.append((start + len(piece) - len(piece.lstrip()), end - len(piece) + len(piece.rstrip())))
    return spans


def split_problems(split, where: str = "rewards.step_split") -> list[str]:
    """A split that is not a usable separator regex ("" is: each reward splits its own way)."""
    if not isinstance(split, str):
        return [f"{where} must be a regular expression (a string), or '' for each step reward's own split; "
                f"got {split!r}"]
    if not split:
        return []
    try:
        rx = re.compile(split)
    except re.error as e:
        return [f"{where} {split!r} is not a valid regular expression: {e}"]
    if rx.fullmatch(""):
        return [f"{where} {split!r} matches the empty string, so it would cut between every character; "
                f"give a separator that matches text, e.g. '\\n\\n' or '(?=Step )'"]
    return []


def _is_number(w) -> bool:
    return isinstance(w, Real) and not isinstance(w, bool) and math.isfinite(w)


def step_reward_problems(step_weights: dict, params: dict, split: str, where: str = "rewards") -> list[str]:
    """Start-up problems of the step rewards `step_weights` ({name: weight}), their settings
    `params` ({name: {key: value}}, the shared `rewards.params`) and the run's `split`, each
    saying what to change. A user's reward (import path) is checked for its mark and settings
    when `WeightedStepRewards` imports it."""
    from . import REWARDS
    from .settings import check_settings

    problems = split_problems(split, f"{where}.step_split")
    if not isinstance(step_weights, dict):
        return problems + [f"{where}.step_weights must be a mapping {{reward: weight}}, got {step_weights!r}"]
    for name, weight in step_weights.items():
        if not _is_number(weight):
            problems.append(f"{where}.step_weights.{name} must be a finite number, got {weight!r}")
        if name in REWARDS:
            if not is_step_reward(REWARDS[name]):
                problems.append(f"{where}.step_weights names {name!r}, an outcome reward (one score per "
                                f"completion); move it to {where}.weights, or name a step reward: "
                                f"{', '.join(sorted(n for n, f in REWARDS.items() if is_step_reward(f)))}")
            elif isinstance(params, dict) and name in params:
                problems += check_settings(name, REWARDS[name], params[name], True, f"{where}.params")
        elif ":" not in str(name):
            problems.append(f"{where}.step_weights names unknown reward {name!r}"
                            + suggest(str(name), sorted(n for n, f in REWARDS.items() if is_step_reward(f)))
                            + " (or give an import path package.module:function)")
    if len(step_weights) > 1 and split == "":
        problems.append(f"{where}.step_weights names {len(step_weights)} step rewards "
                        f"({', '.join(map(str, step_weights))}) but {where}.step_split is '', so each would "
                        f"split completions its own way and their steps could not be summed; set "
                        f"{where}.step_split to a separator regex (e.g. '\\n\\n') or keep one step reward")
    return problems


def outcome_reward_problems(weights: dict, where: str = "rewards.weights") -> list[str]:
    """A registered step reward named where outcome rewards go (one score per completion)."""
    from . import REWARDS

    return [f"{where} names {name!r}, a step reward (a score per reasoning step); move it to "
            f"rewards.step_weights (with objective.advantage: process)"
            for name in weights if name in REWARDS and is_step_reward(REWARDS[name])]


def _steps_of(fn: Callable, completions: list[str], **kwargs) -> list[list[tuple]]:
    """A step reward's lists with each step as a plain tuple (so that they travel back from a
    worker whatever the reward's own classes are); anything else is left for `_checked`."""
    return [[tuple(s) if isinstance(s, (tuple, list)) else s for s in steps] if isinstance(steps, (list, tuple))
            else steps for steps in fn(completions, **kwargs)]


def _checked(got, completion: str, spans: list[tuple[int, int]] | None) -> tuple[list[Step], int]:
    """(the Steps of one completion, how many scores were not finite); ValueError for steps
    that break the contract."""
    if not isinstance(got, (list, tuple)):
        raise ValueError(f"the steps of a completion are {got!r}, not a list of Steps")
    steps = []
    for s in got:
        if not isinstance(s, (tuple, list)) or not 2 <= len(s) <= 3:
            raise ValueError(f"a step is {s!r}, not a Step(end, score, reason)")
        end, score, reason = (*s, "")[:3]
        if isinstance(end, bool) or not isinstance(end, int) or not 0 < end <= len(completion):
            raise ValueError(f"step end {end!r} is not an offset in 1..{len(completion)}")
        if steps and end <= steps[-1].end:
            raise ValueError(f"step ends are not strictly increasing ({steps[-1].end} then {end})")
        if score is not None and (isinstance(score, bool) or not isinstance(score, Real)):
            raise ValueError(f"step score {score!r} is not a number or None")
        steps.append(Step(end, None if score is None else float(score), str(reason)))
    if spans is not None and [s.end for s in steps] != [e for _, e in spans]:
        raise ValueError(f"step ends {[s.end for s in steps]} are not the ends of the split's spans "
                         f"{[e for _, e in spans]}")
    bad = sum(s.score is not None and not math.isfinite(s.score) for s in steps)
    return [Step(s.end, None, f"non-finite score {s.score}") if s.score is not None and not math.isfinite(s.score)
            else s for s in steps], bad


class WeightedStepRewards:
    """The step rewards of a run, by name and weight, each with its settings (`params`), on
    the steps of `split` (a separator regex for `split_steps`; "" = each reward's own)."""

    def __init__(self, weights: dict[str, float], params: dict[str, dict] | None = None, split: str = "",
                 timeout_s: float = 60.0, on_error: float | None = 0.0, isolate: bool = True):
        from . import REWARDS, get_reward
        from .settings import check_settings

        problems = split_problems(split, "split")
        self.weights = dict(weights)
        self.params = {name: dict((params or {}).get(name) or {}) for name in weights}
        self.fns = {name: get_reward(name, import_timeout_s=timeout_s) for name in weights}
        self.builtin = {name: name in REWARDS for name in weights}
        for name, fn in self.fns.items():
            if not is_step_reward(fn):
                problems.append(f"{name!r} is not a step reward" + (
                    "" if self.builtin[name] else " (mark it with the thinkrl.rewards.steps.step_reward decorator)"))
            problems += check_settings(name, fn, self.params[name], self.builtin[name])
        if problems:
            raise ValueError("; ".join(problems))
        self.split, self.timeout_s, self.on_error, self.isolate = split, timeout_s, on_error, isolate
        self.errors = {name: 0 for name in weights}  # failed batches and broken completions, per reward
        self.nonfinite = {name: 0 for name in weights}  # NaN/inf step scores in the last call, per reward

    def _failed(self, spans: list[tuple[int, int]] | None, reason: str) -> list[Step]:
        return [] if spans is None else [Step(end, self.on_error, reason) for _, end in spans]

    def scores(self, completions: list[str], rows: list[dict], prompts: list[str] | None = None,
               ) -> dict[str, list[list[Step]]]:
        """{name: one list of Steps per completion}; failures as the module docstring says."""
        spans = [split_steps(c, self.split) for c in completions] if self.split else None
        keys = dict.fromkeys(k for r in rows for k in r)  # every column any row has, in order
        columns = {k: [r.get(k) for r in rows] for k in keys}
        per: dict[str, list[list[Step]]] = {}
        for name in self.fns:
            kwargs = dict(columns, prompts=prompts, **self.params[name])
            if spans is not None:
                kwargs["steps"] = spans
            self.nonfinite[name] = 0
            try:
                lists = run_reward(name, self.fns[name], self.builtin[name], completions, kwargs, self.timeout_s,
                                   self.isolate, call=_steps_of)
                if len(lists) != len(completions):
                    raise ValueError(f"returned {len(lists)} lists of steps for {len(completions)} completions")
            except Exception as e:  # a broken reward must not end the run
                self.errors[name] += 1
                log.warning("step reward %r failed (%s: %s) on a batch of %d; %s. First input: completion %r, row %r",
                            name, type(e).__name__, e, len(completions),
                            "no steps" if spans is None else f"its steps score {self.on_error}",
                            completions[0][:200] if completions else "", rows[0] if rows else None)
                per[name] = [self._failed(None if spans is None else spans[i], f"reward failed: {type(e).__name__}: {e}")
                             for i in range(len(completions))]
                continue
            per[name] = []
            for i, got in enumerate(lists):
                try:
                    steps, bad = _checked(got, completions[i], None if spans is None else spans[i])
                except (TypeError, ValueError) as e:
                    self.errors[name] += 1
                    log.warning("step reward %r broke the step contract on completion %r: %s", name,
                                completions[i][:200], e)
                    steps, bad = self._failed(None if spans is None else spans[i], f"bad steps: {e}"), 0
                self.nonfinite[name] += bad
                per[name].append(steps)
        return per

    def __call__(self, completions: list[str], rows: list[dict], prompts: list[str] | None = None):
        """(steps, per_reward): `steps[i]` the (end, weighted score summed over the rewards) of
        each scored step of completion i, in order; `per_reward[name][i]` the mean score of that
        reward's scored steps of completion i (None if none), for logging."""
        if len(self.fns) > 1 and not self.split:
            raise ValueError(f"{len(self.fns)} step rewards ({', '.join(self.fns)}) need a shared split to be "
                             f"summed; give a separator regex as the split, or use one step reward")
        per = self.scores(completions, rows, prompts)
        steps, means = [], {name: [] for name in per}
        for i in range(len(completions)):
            total: dict[int, float] = {}
            for name, lists in per.items():
                scored = [s for s in lists[i] if s.score is not None]
                for s in scored:
                    total[s.end] = total.get(s.end, 0.0) + self.weights[name] * s.score
                means[name].append(sum(s.score for s in scored) / len(scored) if scored else None)
            steps.append(sorted(total.items()))
        return steps, means
