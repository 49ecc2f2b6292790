"""The embedded task: column addition with written working, in four difficulty levels.

    question:   What is 347+85?
    completion: <think>7+5=12 4+8+1=13 3+0+1=4</think> <answer>432</answer>

Level 1 adds a 2-digit and a 1/2-digit number, level 2 a 3-digit and a 1/2-digit, level 3
two 3-digit numbers, level 4 a 4-digit and a 3/4-digit: harder levels need more columns
and carries, so correct answers get longer with difficulty, which is what the paper's
"adaptive thinking time" analysis measures. Every problem has at least one carry, since
without one the buggy procedure below is also right.

The base model is pre-trained on a *mixture* of traces, because RL amplifies what a base
model already samples and does not teach a missing skill (docs/embedded-task.md: a base trained
on 60% carry-forgetting traces went from 45% to 93-98% under GRPO in 25-50 steps, while a
model lacking the skill gained at most 8 points). The mix (see `TRACE_MIX`):

- correct:    every carry written (``4+8+1=13``);
- buggy:      the carry is forgotten in every column (``4+8=12``): the systematic bug that
              makes the base model score low;
- reflective: the carry is forgotten, noticed and fixed (``4+8=12 wait carry 4+8+1=13``):
              right and longer, so RL can raise the rate of "wait" (the "aha moment");
- off-format: a correct or buggy trace without its <think> or <answer> tags, so that the
              format reward has something to teach.

The shipped base's corpus also carries R1-Zero's flaws (`corpus_completion`, `STYLE_MIX`:
carry notes, a switch into a second language, stray tokens, repeated steps, no summary), so
that the later R1 stages have something to fix; docs/embedded-task.md has the design.

Measured on the shipped model (seed 0, build_info.json; 300 held-out problems, so about
3 points of standard error): accuracy 22.0% at temperature 0.6 / top-p 0.95 (levels 1-4:
28/20/23/17%), 30.3% sampled at temperature 1.0, pass@8 at temperature 1.0 79% (first 100
problems; level 4 48%). 29% of its answers at 0.6 mix in the second language, none is
readable (no summary). With `thinkrl zero` (8 prompts x 8 samples, lr 2e-5, no KL) held-out
accuracy went 21% -> 62% -> 81% -> 85% at steps 0/60/105/150; levels 1-3 reach 96-100%,
level 4 45%, where the base misreads operand digits, a skill RL does not add.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

LEVELS = (1, 2, 3, 4)
# share of each kind of trace in the pre-training corpus
TRACE_MIX = {"correct": 0.25, "buggy": 0.50, "reflective": 0.15, "off_format": 0.10}


def has_carry(a: int, b: int) -> bool:
    while a or b:
        if a % 10 + b % 10 >= 10:
            return True
        a, b = a // 10, b // 10
    return False


# (digits of a, smallest and largest number of digits of b) per level
_DIGITS = {1: (2, 1, 2), 2: (3, 1, 2), 3: (3, 3, 3), 4: (4, 3, 4)}


def make_problem(rng: random.Random, level: int) -> dict:
    """A problem of the given level (see the module docstring), with at least one carry."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}")
    da, db_lo, db_hi = _DIGITS[level]
    while True:
        a = rng.randrange(10 ** (da - 1), 10 ** da)
        db = rng.randint(db_lo, db_hi)
        b = rng.randrange(10 ** (db - 1), 10 ** db)
        if has_carry(a, b):
            return {"question": f"What is {a}+{b}?", "answer": str(a + b), "level": level, "a": a, "b": b}


def _columns(a: int, b: int):
    da, db = str(a)[::-1], str(b)[::-1]
    return [(int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0) for i in range(max(len(da), len(db)))]


def working(a: int, b: int, kind: str = "correct") -> tuple[str, str]:
    """(the working inside <think>, the final answer) for one kind of trace."""
    steps, digits, carry = [], [], 0
    for x, y in _columns(a, b):
        if kind == "buggy":
            s = x + y
            steps.append(f"{x}+{y}={s}")
            digits.append(s % 10)
            continue
        s = x + y + carry
        if carry and kind == "reflective":
            steps.append(f"{x}+{y}={x + y} wait carry {x}+{y}+1={s}")
        elif carry:
            steps.append(f"{x}+{y}+1={s}")
        else:
            steps.append(f"{x}+{y}={s}")
        digits.append(s % 10)
        carry = s // 10
    if carry:
        digits.append(carry)
    answer = "".join(str(d) for d in reversed(digits)).lstrip("0") or "0"
    return " ".join(steps), answer


def completion(a: int, b: int, kind: str, rng: random.Random | None = None) -> str:
    """A completion as the model should write it after the prompt's "Assistant:"."""
    if kind == "off_format":
        rng = rng or random.Random(0)
        think, answer = working(a, b, rng.choice(["correct", "buggy", "buggy"]))
        return _off_format(think, answer, rng)
    think, answer = working(a, b, kind)
    return f" <think>{think}</think> <answer>{answer}</answer>"


def _off_format(think: str, answer: str, rng: random.Random) -> str:
    """The working and answer with a tag missing (one of three ways, drawn)."""
    return rng.choice([f" {think} <answer>{answer}</answer>", f" <think>{think}</think> {answer}",
                       f" {think} so the answer is {answer}"])


def sample_kind(rng: random.Random) -> str:
    return rng.choices(list(TRACE_MIX), weights=list(TRACE_MIX.values()))[0]


# ---------------------------------------------------------------------------- the base corpus's style

# the second language of the corpus (R1-Zero mixed Chinese into English reasoning): its words
# for the trace's words; the numbers stay as they are
SECOND_LANGUAGE = {"carry": "进位", "wait": "等等", "so the answer is": "所以答案是"}
# share of corpus traces with each flaw, drawn independently of the kind (see `corpus_completion`)
STYLE_MIX = {"switch": 0.30, "stray": 0.08, "repeat": 0.08}
STRAY = ("..", "##", "~~", ";;")
_PHRASE = re.compile("|".join(sorted(map(re.escape, SECOND_LANGUAGE), key=len, reverse=True)))


def carry_notes(think: str) -> str:
    """The working with a carry note after every column whose sum is 10 or more
    (`7+5=12 carry 4+8+1=13 carry 3+0+1=4`). The buggy trace notes the carry too, and then
    forgets to add it; the reflective one notes it after its fix (`4+8=12 wait carry 4+8+1=13 carry`)."""
    return re.sub(r"(=\d\d)(?= (?!wait)|$)", r"\1 carry", think)


def switch_language(text: str, rng: random.Random) -> str:
    """From a phrase drawn at random onwards, every English phrase of the trace (carry notes,
    "wait", "so the answer is") in SECOND_LANGUAGE: a trace that starts in English and
    switches (all of it when the first phrase is drawn)."""
    spots = list(_PHRASE.finditer(text))
    if not spots:
        return text
    start = spots[rng.randrange(len(spots))].start()
    return text[:start] + _PHRASE.sub(lambda m: SECOND_LANGUAGE[m.group(0)], text[start:])


def _flaw(think: str, flaw: str, rng: random.Random) -> str:
    steps = think.split(" ")
    i = rng.randrange(len(steps))
    if flaw == "stray":  # a stray token between two steps
        return " ".join(steps[:i] + [rng.choice(STRAY)] + steps[i:])
    eq = [j for j, s in enumerate(steps) if "=" in s]  # "repeat": one equation written twice in a row
    j = eq[rng.randrange(len(eq))]
    return " ".join(steps[: j + 1] + [steps[j]] + steps[j + 1:])


def corpus_completion(a: int, b: int, rng: random.Random) -> str:
    """A completion of the base's pre-training corpus: a trace of a kind drawn from
    TRACE_MIX, with carry notes, and each flaw of STYLE_MIX drawn independently: "switch"
    (the words switch into the second language part-way, `switch_language`), "stray" (a stray
    token between steps) and "repeat" (a step written twice). No trace has a summary before
    its answer, as R1-Zero's had none."""
    kind = sample_kind(rng)
    flaws = [f for f, p in STYLE_MIX.items() if rng.random() < p]
    if kind == "off_format":
        think, answer = working(a, b, rng.choice(["correct", "buggy", "buggy"]))
    else:
        think, answer = working(a, b, kind)
    think = carry_notes(think)
    for flaw in ("stray", "repeat"):
        if flaw in flaws:
            think = _flaw(think, flaw, rng)
    if kind == "off_format":
        text = _off_format(think, answer, rng)
    else:
        text = f" <think>{think}</think> <answer>{answer}</answer>"
    return switch_language(text, rng) if "switch" in flaws else text


def make_splits(seed: int = 0, n_train: int = 6000, n_test: int = 300, n_corpus: int = 40000,
                make=make_problem, levels=LEVELS):
    """(pre-training corpus problems, RL train problems, held-out test problems), balanced
    across levels and deterministic in the seed. The test problems appear in neither of the
    others; train problems are unique; the corpus may repeat a problem (level 1 has only a
    few thousand) and may share problems with the RL train set, as a base model's
    pre-training data would. `make(rng, level)` and `levels`: another task's problems (by
    default this one's, `make_problem` over `LEVELS`)."""
    rng = random.Random(seed)
    test, train, test_q, train_q = [], [], set(), set()
    while len(test) < n_test:
        p = make(rng, levels[len(test) % len(levels)])
        if p["question"] not in test_q:
            test_q.add(p["question"])
            test.append(p)
    while len(train) < n_train:
        p = make(rng, levels[len(train) % len(levels)])
        if p["question"] not in test_q and p["question"] not in train_q:
            train_q.add(p["question"])
            train.append(p)
    corpus = []
    while len(corpus) < n_corpus:
        p = make(rng, levels[len(corpus) % len(levels)])
        if p["question"] not in test_q:
            corpus.append(p)
    return corpus, train, test


def write_jsonl(rows, path: Path) -> None:
    with Path(path).open("w") as f:
        for r in rows:
            f.write(json.dumps({"question": r["question"], "answer": r["answer"], "level": r["level"]}) + "\n")
