"""A reward's own settings (`rewards.params.<name>`, `thinkrl score --param NAME.key=value`),
checked at start rather than discovered wrong after hours of training.

- A setting must be a parameter the reward function names in its signature. Every reward
  takes `**kwargs` (the contract in `rewards.base`: dataset columns arrive as keywords and
  must be ignored when unused), so `**kwargs` cannot mean "any setting is fine": for the
  registered rewards a misspelt setting (`sourse=boxed`) would be silently ignored. It is
  refused, naming the settings the reward has. A user's reward (an import path) that takes
  `**kwargs` may read settings from them, so there unknown names are let through; one without
  `**kwargs` is held to its signature.
- A registered rule reward is called once on a sample completion with the settings, so that
  an impossible value (`source=nonsense`, a language it does not know, `cache_length` above
  `max_length`) fails now, with the reward's own message, instead of scoring every batch
  `rewards.on_error`. The reward-model rewards are not called: that loads a model.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Callable

from ..checks import suggest
from . import REWARDS

CONTRACT = {"completions", "prompts", "completion_lengths", "steps"}  # what the caller passes, never a setting
COLUMNS = {"answer", "tests", "entry_point"}  # dataset columns a reward names: accepted, not listed as settings
NOT_PROBED = {"reward_model", "helpfulness", "harmlessness"}  # calling them loads a model
_PROBE = {"completions": ["<think> 1+1=2 </think> <answer> 2 </answer>"], "prompts": ["What is 1+1?"],
          "answer": ["2"], "completion_lengths": [12]}


def reward_settings(fn: Callable) -> tuple[list[str], bool]:
    """(the keyword parameters a reward names, other than the contract's; whether it takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a callable without a signature: nothing can be checked
        return [], True
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and p.name not in CONTRACT]
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def check_settings(name: str, fn: Callable, params: dict, registered: bool, where: str = "rewards.params") -> list[str]:
    """Problems with the settings `params` of reward `name` (empty when they are usable)."""
    if not isinstance(params, dict):
        return []  # the config's own check names a settings block that is not a mapping
    named, takes_any = reward_settings(fn)
    unknown = [k for k in params if k not in named]
    if unknown and (registered or not takes_any):
        shown = [n for n in named if n not in COLUMNS]
        problems = []
        for key in unknown:
            close = difflib.get_close_matches(key, shown, n=1, cutoff=0.6)
            problems.append(f"{where}.{name}.{key} is not a setting of the {name!r} reward"
                            + (f"; did you mean {close[0]!r}?" if close else "")
                            + f" (its settings: {', '.join(shown) if shown else 'none'})")
        return problems
    if registered and name not in NOT_PROBED and params:
        try:
            fn(**{**_PROBE, **params})
        except Exception as e:  # the reward's own complaint about a value
            settings = ", ".join(f"{k}={v!r}" for k, v in params.items())
            return [f"{where}.{name}: the {name!r} reward refuses {settings}: {e}"]
    return []


def reward_problems(rw, max_new_tokens: int) -> list[str]:
    """`rw`: a RewardsConfig. Unknown rewards, settings of rewards not in the run, settings a
    registered reward does not take or refuses (`check_settings`), and length shaping that
    can never apply under the rollout's token budget."""
    errors = []
    if not rw.weights and not getattr(rw, "step_weights", None):  # process supervision may use step rewards alone
        errors.append("rewards.weights is empty; name at least one reward, e.g. {accuracy: 1.0, format: 1.0}")
    named = {name: "rewards.weights" for name in rw.weights}
    for kind, weights in rw.by_type.items():
        if not weights:
            errors.append(f"rewards.by_type.{kind} is empty; name its rewards, e.g. {{accuracy: 1.0}}")
        named.update({name: f"rewards.by_type.{kind}" for name in weights if name not in named})
    for name, where in named.items():
        if not (name in REWARDS or ":" in name):
            errors.append(f"{where} names unknown reward {name!r}" + suggest(name, sorted(REWARDS))
                          + " (or give an import path package.module:function)")
    bad_settings = set()
    stepped = getattr(rw, "step_weights", None) or {}  # their settings: rewards.steps.step_reward_problems
    for name, params in rw.params.items():
        if name in stepped and name not in named:
            continue
        if name not in named:
            errors.append(f"rewards.params.{name} sets a reward that is not in rewards.weights, rewards.by_type "
                          "or rewards.step_weights" + suggest(name, sorted([*named, *stepped])))
        if not isinstance(params, dict):
            errors.append(f"rewards.params.{name} must be a mapping of keyword settings, got {params!r}")
        elif name in REWARDS:  # a user's reward is checked when it is imported, at the start of the run
            found = check_settings(name, REWARDS[name], params, registered=True)
            errors += found
            bad_settings.update([name] if found else [])
    if not rw.timeout_s > 0:
        errors.append("rewards.timeout_s must be > 0 seconds")
    for name in ("overlong", "cosine_length"):  # length shaping must be able to reach the budget
        if name in rw.weights and name in REWARDS and name not in bad_settings:
            limit = rw.params.get(name, {}).get("max_length")
            if limit is None:
                limit = inspect.signature(REWARDS[name]).parameters["max_length"].default
            if limit > max_new_tokens:
                errors.append(f"the {name} reward's max_length is {limit} but completions stop at "
                              f"rollout.max_new_tokens={max_new_tokens}, so its length shaping never applies; set "
                              f"rewards.params.{name}.max_length={max_new_tokens}")
    return errors
