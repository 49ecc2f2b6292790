"""Step labels of the embedded task, for process supervision (a process reward model, PRM):
every column equation of a completion (`rewards.steps.EQUATION_PATTERN`: `7+5=12`, `4+8+1=13`)
is one step, labelled right or wrong by the procedure itself, so no person labels anything.

A step is right when it is, character for character, the correct equation of the column it
works on: the right column's two digits in order, `+1` exactly when a carry comes in (the
true carry, from the correct sums), and the right sum. The column a step works on: the
first step works on the units; each later step on the next column, unless the text since
the previous step holds the word "wait" (the task's reflection, `4+8=12 wait carry
4+8+1=13`), in which case it works on the same column again. Equations past the last column
are wrong (there is no such column).

    What is 347+85?   <think>7+5=12 4+8=12 wait carry 4+8+1=13 3+0+1=4</think> ...
    steps:                   right  wrong             right    right

`step_examples` writes such traces from the task's own problems: every kind
`arithmetic.completion` makes (correct, buggy, reflective, off-format, in `TRACE_MIX`
shares), and with probability `corrupt` one equation's sum has one digit changed, so that
not every wrong step is a forgotten carry. Rows are `{question, answer, level, kind,
completion, steps: [{end, label}]}`, `end` the character end (exclusive) of the step's
equation in the completion; deterministic in the seed. `step_splits` takes the training
traces from the task's train split and the held-out ones from its test split
(`arithmetic.make_splits`), so a PRM is measured on problems it never saw.
"""

from __future__ import annotations

import random
import re

from ..rewards.steps import EQUATION_PATTERN
from .arithmetic import completion, make_splits, sample_kind, working

_EQUATION = re.compile(EQUATION_PATTERN)
_RETRY = re.compile(r"\bwait\b")


def right_equations(a: int, b: int) -> list[str]:
    """The correct equation of each column, units first (`347+85`: 7+5=12, 4+8+1=13, 3+0+1=4)."""
    return _EQUATION.findall(working(a, b, "correct")[0])


def label_steps(a: int, b: int, text: str) -> list[dict]:
    """`[{end, label}]` for each equation of `text`, a completion to `a+b` (module docstring)."""
    right = right_equations(a, b)
    out, column, previous_end = [], -1, 0
    for m in _EQUATION.finditer(text):
        if column < 0 or not _RETRY.search(text[previous_end:m.start()]):
            column += 1
        out.append({"end": m.end(), "label": column < len(right) and m.group() == right[column]})
        previous_end = m.end()
    return out


def corrupt_sum(text: str, rng: random.Random) -> str:
    """`text` with one digit of one equation's sum changed (same length, so no other offset
    moves); a multi-digit sum keeps a non-zero first digit. Unchanged when there is no equation."""
    found = list(_EQUATION.finditer(text))
    if not found:
        return text
    m = rng.choice(found)
    start = m.start() + m.group().index("=") + 1
    i = start + rng.randrange(m.end() - start)
    lowest = 1 if i == start and m.end() - start > 1 else 0
    new = rng.choice([str(d) for d in range(lowest, 10) if str(d) != text[i]])
    return text[:i] + new + text[i + 1:]


def step_examples(problems: list[dict], n: int, seed: int, corrupt: float = 0.25) -> list[dict]:
    """`n` labelled traces, going through `problems` in order (again from the first when
    there are fewer than `n`); kinds drawn with `arithmetic.TRACE_MIX`'s shares, a share
    `corrupt` of them with one sum digit changed (kind `<kind>+corrupt`)."""
    if not problems:
        raise ValueError("no problems to write traces for")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        p = problems[i % len(problems)]
        kind = sample_kind(rng)
        text = completion(p["a"], p["b"], kind, rng)
        if rng.random() < corrupt:
            text, kind = corrupt_sum(text, rng), kind + "+corrupt"
        rows.append({"question": p["question"], "answer": p["answer"], "level": p["level"], "kind": kind,
                     "completion": text, "steps": label_steps(p["a"], p["b"], text)})
    return rows


def step_splits(seed: int = 0, n_train: int = 10000, n_test: int = 600, corrupt: float = 0.25):
    """(training traces on the task's train problems, held-out traces on its test problems),
    both from `arithmetic.make_splits(seed)` (seed 0: the embedded task's own held-out set)."""
    _, train, test = make_splits(seed, n_corpus=0)
    return step_examples(train, n_train, seed, corrupt), step_examples(test, n_test, seed + 1, corrupt)
