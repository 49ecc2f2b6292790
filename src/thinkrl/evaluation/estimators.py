"""Scores from several sampled answers per question, each with its standard error.

The R1 protocol (docs/EVALUATION.md; DeepSeek-R1, arXiv 2501.12948, §3) samples k answers per
question instead of decoding greedily and reports

    pass@1 = 1/Q Σ_q 1/k Σ_i correct_qi          mean correctness over the samples
    cons@k = 1/Q Σ_q correct(majority_q)          majority vote over the k answers
                                                  (self-consistency: Wang et al. 2022,
                                                  arXiv 2203.11171)

and the code benchmarks report pass@k, estimated without bias from n ≥ k samples of which c
are correct (Chen et al. 2021, arXiv 2107.03374, §2.1, eq. 1):

    pass@k = 1 − C(n−c, k) / C(n, k)  =  1 − ∏_{i=n−c+1}^{n} (1 − k/i)

(the product form never builds the huge binomials; pass@k = 1 when n − c < k, since every
k-subset then holds a correct sample).

Standard errors are over questions: each question's score is computed first (its pass@k
estimate, its mean correctness, its vote's correctness), then SE = sample std (n − 1
denominator) of those Q per-question scores / √Q; 0 for a single question, where there is no
spread to measure. The k samples of one question are correlated, so treating all Q·k samples
as independent would understate the error; the per-question ("clustered") SE counts both
the spread between questions and the sampling noise within each, which shows up in the
per-question scores (Miller 2024, "Adding Error Bars to Evals", arXiv 2411.00640, §2-3).

Majority vote groups answers into equivalence classes: by exact string after whitespace
normalisation (`majority_vote`'s default), by any `equivalent(a, b)` you pass, or by the math
verifier (`math_equivalence_classes`, so that `1/2`, `\\frac{1}{2}` and `0.5` vote together).
"""

from __future__ import annotations

import logging
import math
import operator
from typing import Callable, Sequence

log = logging.getLogger("thinkrl.evaluation")


# ---------------------------------------------------------------- pass@k and pass@1


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1):
    1 − C(n−c, k)/C(n, k), as a product; 1.0 when n − c < k."""
    n, c, k = operator.index(n), operator.index(c), operator.index(k)
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error of the mean): sample std with the n − 1 denominator / √n; the SE
    is 0 for a single value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to average")
    q = len(values)
    m = math.fsum(values) / q
    if q == 1:
        return m, 0.0
    var = math.fsum((v - m) ** 2 for v in values) / (q - 1)
    return m, math.sqrt(var / q)


def _as_bool(x, where: str) -> bool:
    # correctness from a reward comes as 1.0 / 0.0; anything else (None, 0.5) is a mistake here
    if isinstance(x, bool):
        return x
    if isinstance(x, (int, float)) and x in (0, 1):
        return bool(x)
    raise ValueError(f"{where}: correctness must be True/False (or 1/0), got {x!r}")


def _counts(correct: Sequence[Sequence[bool]]) -> list[tuple[int, int]]:
    """(n samples, c correct) per question, validated."""
    if not correct:
        raise ValueError("no questions")
    out = []
    for q, samples in enumerate(correct):
        if not samples:
            raise ValueError(f"question {q} has no samples")
        out.append((len(samples), sum(_as_bool(x, f"question {q}") for x in samples)))
    return out


def default_ks(k_max: int) -> list[int]:
    """1, 2, 4, 8, … up to k_max, and k_max itself."""
    ks, k = [], 1
    while k <= k_max:
        ks.append(k)
        k *= 2
    if ks[-1] != k_max:
        ks.append(k_max)
    return ks


def pass_at_k_table(correct: Sequence[Sequence[bool]], ks: Sequence[int] | None = None
                    ) -> dict[int, tuple[float, float]]:
    """{k: (mean over questions of the unbiased pass@k, its SE over questions)}.

    `correct[q][i]`: whether sample i of question q is correct. Questions may have different
    numbers of samples; every k must be at most the smallest. `ks` defaults to 1, 2, 4, … up
    to K plus K itself, where K is the smallest number of samples of a question."""
    counts = _counts(correct)
    k_max = min(n for n, _ in counts)
    ks = default_ks(k_max) if ks is None else list(ks)
    table = {}
    for k in ks:
        if not 1 <= k <= k_max:
            raise ValueError(f"pass@{k}: k must be between 1 and the fewest samples of a question ({k_max})")
        table[k] = mean_and_se([pass_at_k(n, c, k) for n, c in counts])
    return table


def pass_at_1(correct: Sequence[Sequence[bool]]) -> tuple[float, float]:
    """(pass@1, SE): each question's mean correctness over its samples, averaged over the
    questions; the SE is over questions (sample std of the per-question means / √Q; 0 for one
    question), see the module docstring for why."""
    return mean_and_se([c / n for n, c in _counts(correct)])


# ---------------------------------------------------------------- majority vote and cons@k


def normalise(answer: str) -> str:
    """Whitespace normalised: stripped, inner runs of whitespace collapsed to one space."""
    return " ".join(answer.split())


def _keys(answers: Sequence[str | None]) -> list[str | None]:
    # an answer that is empty after normalisation is no answer: it never votes
    return [(normalise(a) or None) if a is not None else None for a in answers]


def equivalence_classes(answers: Sequence[str | None],
                        equivalent: Callable[[str, str], bool] | None = None) -> list[int | None]:
    """A class id per answer (None for None / empty answers), ids numbered in order of first
    appearance. Answers are whitespace normalised, and equal normalised strings share a class
    without a call; `equivalent(representative, answer)` (on normalised strings; default: no
    other equivalence) then puts each new string into the first class whose representative
    (its first member) it is equivalent to, or into a new class. Greedy: equivalence is
    assumed reflexive and transitive."""
    reps: list[str] = []
    seen: dict[str, int] = {}
    ids: list[int | None] = []
    for key in _keys(answers):
        if key is None:
            ids.append(None)
            continue
        if key not in seen:
            cls = None
            if equivalent is not None:
                cls = next((i for i, rep in enumerate(reps) if equivalent(rep, key)), None)
            if cls is None:
                cls = len(reps)
                reps.append(key)
            seen[key] = cls
        ids.append(seen[key])
    return ids


def vote(answers: Sequence[str | None], classes: Sequence[int | None]) -> tuple[str | None, int]:
    """(winner, votes) given a class id per answer: the winner is the first member (as
    written) of the class with the most members; a tie goes to the tied class whose first
    member comes earliest in `answers`. (None, 0) when no answer has a class."""
    if len(answers) != len(classes):
        raise ValueError(f"{len(answers)} answers but {len(classes)} class ids")
    count: dict[int, int] = {}
    first: dict[int, int] = {}
    for i, cls in enumerate(classes):
        if cls is None:
            continue
        count[cls] = count.get(cls, 0) + 1
        first.setdefault(cls, i)
    if not count:
        return None, 0
    best = min(count, key=lambda cls: (-count[cls], first[cls]))
    return answers[first[best]], count[best]


def majority_vote(answers: Sequence[str | None],
                  equivalent: Callable[[str, str], bool] | None = None) -> tuple[str | None, int]:
    """(the majority answer, its votes), or (None, 0) when every answer is None.

    None (and empty) answers never vote. Answers are grouped by `equivalent` (default: the
    same string after whitespace normalisation; see `equivalence_classes`); the winner is
    the first member, as written, of the largest class, and a tie goes to the class whose
    first member appears earliest in `answers`, so the result depends only on the order of
    the answers and never on hashing or chance."""
    return vote(answers, equivalence_classes(answers, equivalent))


def cons_at_k(winners_correct: Sequence[bool | None]) -> tuple[float, float]:
    """(cons@k, SE over questions) from whether each question's majority answer is correct;
    None (no answer won the vote) counts as wrong."""
    return mean_and_se([0.0 if w is None else float(_as_bool(w, f"question {q}"))
                        for q, w in enumerate(winners_correct)])


# ---------------------------------------------------------------- equivalence by the math verifier


def math_equivalence_classes(answers: Sequence[str | None], workers: int | None = None,
                             timeout_s: float = 10.0) -> list[int | None]:
    """A class id per final answer (None for None / empty ones), equivalence decided as the
    accuracy reward decides it, so that `1/2`, `\\frac{1}{2}` and `0.5` share a class.

    Cheapest first: equal strings after whitespace normalisation are one class without any
    check; two plain numbers (`72`, `1,000`, `0.5`) are compared exactly in this process
    (`rewards.math._plain_number`); every other pair of distinct strings goes to math-verify
    in the reward worker pool (`workers`, `timeout_s` as in `accuracy_reward`; workers=0
    verifies in this process). Only the verdict "equal" joins two answers; "different",
    "unparsed", a representative that is not math, a failure or a timeout all keep them
    apart. An answer math-verify cannot parse is compared with nothing further.

    Greedy clustering against class representatives (a class's first member), in rounds: the
    first unclassified string opens a class and all remaining strings are checked against it
    in one batch, so there is one batch of verifier calls per class, not K² calls in
    sequence. The representative is math-verify's gold side (it is not always symmetric), and
    equivalence is assumed transitive: `a ~ rep` and `b ~ rep` put a and b together unchecked."""
    from thinkrl.rewards.math import _judge_all, _plain_number

    keys = _keys(answers)
    pending = list(dict.fromkeys(k for k in keys if k is not None))  # distinct, in order
    number = {s: _plain_number(s) for s in pending}
    not_math: set[str] = set()
    class_of: dict[str, int] = {}
    cls = -1
    while pending:
        rep, rest = pending[0], pending[1:]
        cls += 1
        class_of[rep] = cls
        same, to_judge = set(), []
        for s in rest:
            if number[rep] is not None and number[s] is not None:
                if number[rep][0] == number[s][0]:
                    same.add(s)
            elif rep not in not_math and s not in not_math:
                to_judge.append(s)
        if to_judge:
            verdicts = _judge_all([(rep, s) for s in to_judge], workers, timeout_s)
            for s, (verdict, detail) in zip(to_judge, verdicts):
                if verdict == "equal":
                    same.add(s)
                elif verdict == "unparsed":
                    not_math.add(s)
                elif verdict == "bad_reference":
                    not_math.add(rep)
                elif verdict == "failed":
                    log.warning("%s comparing %r with %r for the vote; counted as different",
                                detail, s[:200], rep[:200])
        for s in same:
            class_of[s] = cls
        pending = [s for s in rest if s not in same]
    return [None if k is None else class_of[k] for k in keys]


def math_majority_vote(answers: Sequence[str | None], workers: int | None = None,
                       timeout_s: float = 10.0) -> tuple[str | None, int]:
    """`majority_vote` with equivalence decided by the math verifier
    (`math_equivalence_classes`): (the majority answer as first written, its votes)."""
    return vote(answers, math_equivalence_classes(answers, workers, timeout_s))
