"""Length shaping rewards.

Length |y| of a completion: `completion_lengths[i]` (tokens; the trainer and the evaluator
pass it) when given, else the number of whitespace-separated words of the completion (what
`thinkrl score` can measure without a tokenizer; set the lengths in the same unit).

- `overlong_penalty_reward`: DAPO's soft overlong punishment (Yu et al. 2025, arXiv
  2503.14476, §3.4, eq. 13). Nothing up to L_max − L_cache, then a linear ramp down to −1
  at L_max, −1 beyond. Added to the accuracy reward, it tells the policy that running into
  the length limit costs, without the noise of punishing good reasoning that was merely cut
  off.
- `cosine_length_reward`: the cosine length-scaling reward (Yeo et al. 2025, "Demystifying
  Long Chain-of-Thought Reasoning in LLMs", arXiv 2502.03373, §4). It replaces the
  accuracy reward: a correct answer earns more the shorter it is, a wrong one is punished
  less the longer it is (keep thinking when unsure), exceeding L_max is punished outright.
"""

from __future__ import annotations

import math

from .base import Scored, explained
from .math import accuracy_reward


def _lengths(completions: list[str], completion_lengths) -> tuple[list[int], str]:
    """(|y| of each completion, the unit's name)."""
    if completion_lengths is None:
        return [len(c.split()) for c in completions], "words"
    lengths = list(completion_lengths)
    if len(lengths) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(lengths)} completion lengths")
    return [int(n) for n in lengths], "tokens"


@explained
def overlong_penalty_reward(completions: list[str], max_length: int = 20480, cache_length: int = 4096,
                            completion_lengths: list[int] | None = None, **kwargs) -> list[Scored]:
    """DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13), with L_max = `max_length`
    and L_cache = `cache_length`:

        R(y) = 0                                  if |y| ≤ L_max − L_cache
             = ((L_max − L_cache) − |y|) / L_cache  if L_max − L_cache < |y| ≤ L_max
             = −1                                 if |y| > L_max

    In [−1, 0]; 0 is full marks. Defaults are DAPO's: 16,384 expected tokens plus a 4,096-token
    punishment cache, L_max = 20,480, the generation limit. Set `max_length` to the rollout's
    `max_new_tokens` (a completion cut off there has |y| = L_max and gets −1 from the ramp).
    |y|: see the module docstring."""
    if not 0 <= cache_length <= max_length:
        raise ValueError(f"need 0 ≤ cache_length ≤ max_length, got cache_length={cache_length}, "
                         f"max_length={max_length}")
    soft = max_length - cache_length
    lengths, unit = _lengths(completions, completion_lengths)
    out = []
    for n in lengths:
        if n <= soft:
            out.append(Scored(0.0))
        elif n <= max_length:
            out.append(Scored((soft - n) / cache_length,
                              f"{n} {unit}, {n - soft} into the {cache_length}-{unit[:-1]} overlong buffer "
                              f"before the limit {max_length}"))
        else:
            out.append(Scored(-1.0, f"{n} {unit} is over the limit {max_length}"))
    return out


def cosine(t: float, T: float, r_0: float, r_T: float) -> float:
    """Yeo et al.'s CosFn: r_0 at t = 0 falling (or rising) along a half cosine to r_T at
    t = T:  r_T + ½ (r_0 − r_T) (1 + cos(π t / T))."""
    return r_T + 0.5 * (r_0 - r_T) * (1.0 + math.cos(math.pi * t / T))


@explained
def cosine_length_reward(completions: list[str], answer: list | None = None, max_length: int = 14336,
                         r_c_0: float = 2.0, r_c_L: float = 1.0, r_w_0: float = -10.0, r_w_L: float = 0.0,
                         r_exceed: float = -10.0, source: str = "answer_or_boxed",
                         completion_lengths: list[int] | None = None, **kwargs) -> list[Scored]:
    """Cosine length-scaled correctness (Yeo et al. 2025, arXiv 2502.03373, §4):

        R(y) = CosFn(|y|, L_max, r_c_0, r_c_L)   if the answer is correct and |y| ≤ L_max
             = CosFn(|y|, L_max, r_w_0, r_w_L)   if it is wrong (or missing) and |y| ≤ L_max
             = r_exceed                          if |y| > L_max
        CosFn(t, T, r_0, r_T) = r_T + ½ (r_0 − r_T) (1 + cos(π t / T))

    so a correct answer earns r_c_0 at length 0 down to r_c_L at L_max (shorter is better),
    a wrong one r_w_0 at length 0 up to r_w_L at L_max (longer is better: keep thinking).
    Defaults are the paper's (§4, and the §4.2 run script of its code release): r_c_0 = 2,
    r_c_L = 1, r_w_0 = −10, r_w_L = 0, r_exceed = −10, and L_max = 14,336, the generation
    limit of its 16K-context runs (2,048 prompt tokens). Set `max_length` to the rollout's
    `max_new_tokens`, or one less to treat a cut-off completion as exceeding.

    Correctness is `accuracy_reward(completions, answer=answer, source=source)`; where it is
    None (the reference cannot be parsed) so is this reward. |y|: see the module docstring."""
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    correct = accuracy_reward(completions, answer=answer, source=source)
    lengths, unit = _lengths(completions, completion_lengths)
    out = []
    for ok, n in zip(correct, lengths):
        if ok is None:
            out.append(Scored(None, "reference answer cannot be parsed"))
        elif n > max_length:
            out.append(Scored(float(r_exceed), f"{n} {unit} is over the limit {max_length}"))
        elif ok == 1.0:
            value = cosine(n, max_length, r_c_0, r_c_L)
            out.append(Scored(value, "" if value == r_c_0 else
                              f"correct, {n} {unit} long (the shorter, the more: {r_c_0} at 0, "
                              f"{r_c_L} at {max_length})"))
        else:
            value = cosine(n, max_length, r_w_0, r_w_L)
            out.append(Scored(value, f"wrong or no final answer ({n} {unit}; {r_w_0} at 0, "
                                     f"{r_w_L} at {max_length})"))
    return out
