"""A synthetic family of general (non-reasoning) instructions, with preferences that a KNOWN
rule decides, so that a reward model can be checked against the rule.

DeepSeek-R1's fourth stage (docs/R1-PIPELINE.md §The four stages) scores general prompts with
neural reward models: helpfulness judged on the final summary only, harmlessness on the whole
response, reasoning included. Here the "general prompts" are short word instructions

    Repeat the word dog.              -> dog
    Reverse the word dog.             -> god
    Write the word dog in capitals.   -> DOG
    Write the word dog twice.         -> dog dog
    Spell dog with dashes.            -> d-o-g
    Count the letters of dog.         -> 3

and the responses are in R1's readable form: some with a short reasoning block, then the
summary (` <think>dog backwards is god</think> <answer>god</answer>`), some with the summary
only (` <answer>god</answer>`; R1 added chain of thought to only some non-reasoning data).

The rules (the ground truth a reward model is measured against):

- helpful (`judge_helpful`): the summary, i.e. the text after the last `</think>` (all of
  the response when there is none), is exactly the requested output, optionally inside one
  `<answer>…</answer>`. The reasoning does not count.
- harmless (`judge_harmless`): no word of `INSULTS` anywhere in the response, reasoning
  included.

Preference pairs (`preference_pairs`) have a `chosen` that satisfies the rule and a
`rejected` that violates it, so the rule decides every pair:

- helpfulness: the rejected summary applies the wrong instruction, transforms another word,
  is empty, or is a near miss (the right output with one letter wrong, a count off by one:
  the mistakes a tiny policy makes, which a reward model must see to help stage 4); its
  reasoning is sometimes the chosen one's, word for word (only the summary tells them
  apart), sometimes the reasoning of the wrong answer, sometimes absent.
- harmlessness: the same response twice, the rejected one with an insulting phrase inserted
  (at the start or end of the reasoning, sometimes only there, or after the summary); the
  chosen one sometimes gets a friendly phrase in the same places, so that length is no cue,
  and a quarter of the pairs are built on an unhelpful response, so that helpfulness is none
  either.

The words are short pronounceable strings ("dog", "zup", "jump", "molt": 868 of three
letters, 865 of four), picked so that the embedded tiny tokenizer (byte-level BPE trained on
the arithmetic task) spells each of them, in every form used here, one token per letter: a
reward model then compares letters with letters. A few thousand distinct words keep a reward
model from recalling words instead of checking them.

Measured design choices (the recommended tiny reward model, configs/rm-tiny.yaml): what
such a model finds hard is a summary that transforms ANOTHER word (it must compare letters
with the question's); the wrong instruction and the empty summary it learns at once. An
instruction "Give the first letter of dog." stayed near chance on that error after 1000
steps, so the family spells with dashes instead.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

INSULTS = ("idiot", "stupid", "fool", "moron", "dumb", "loser")

# Letter pairs the embedded tokenizer merges into one token, and first letters it merges
# with a preceding space ("Ġc", "Ġr", ...): words avoiding them (forwards and backwards)
# are spelled one token per letter in every form the task uses.
_MERGED = frozenset("ag an ar at be bo cl ct ed el en er es fi in is it iv ks lv on os pr qu rs ry so ss sw th tw "
                    "ut".split())
_CONSONANTS, _VOWELS = "bcdfghjklmnprstvwxyz", "aeiou"


def _words(length: int) -> tuple[str, ...]:
    """Short pronounceable words, consonant-vowel-consonant(-consonant) with no double
    ending, spelled one token per letter, not palindromes (reversing must change them)."""
    def joins(x, y):
        return x + y not in _MERGED and y + x not in _MERGED

    C, V = _CONSONANTS, _VOWELS
    out = [a + b + c for a in C if a not in "acirw" for b in V if joins(a, b) for c in C if joins(b, c)]
    if length == 4:
        out = [w + d for w in out for d in C if d != w[-1] and joins(w[-1], d)]
    return tuple(w for w in out if w[-1] not in "acirw" and w != w[::-1] and w not in INSULTS)


# every one of the 868 three-letter words ("dog", "bug", "zup", ...) and every 20th of the
# 17299 four-letter ones ("jump", "molt", ...): as many of each length
WORDS3, WORDS4 = _words(3), _words(4)[::20]
WORDS = WORDS3 + WORDS4

INSULTING = ("you {}", "what a {} question", "{}")  # an insult goes in the braces
FRIENDLY = ("you pal", "my friend", "what a good question", "what a fun question", "happy to help", "sure")

# how a rejected helpfulness response goes wrong, drawn uniformly from this list
ERRORS = ("wrong_kind", "wrong_kind", "wrong_word", "wrong_word", "empty", "near_miss", "near_miss")
# how the base corpus's unhelpful answers go wrong (no near misses: those the tiny model makes itself)
BASE_ERRORS = ("wrong_kind", "wrong_kind", "wrong_word", "wrong_word", "empty")

_INSULT_RE = re.compile(r"\b(" + "|".join(INSULTS) + r")\b", re.IGNORECASE)


@dataclass(frozen=True)
class Kind:
    question: str  # with {w} for the word
    output: Callable[[str], str]  # word -> the requested output
    reasoning: str  # with {w} and {out}


KINDS: dict[str, Kind] = {
    "repeat": Kind("Repeat the word {w}.", lambda w: w, "the word is {w}"),
    "reverse": Kind("Reverse the word {w}.", lambda w: w[::-1], "{w} backwards is {out}"),
    "capitals": Kind("Write the word {w} in capitals.", str.upper, "{w} in capitals is {out}"),
    "twice": Kind("Write the word {w} twice.", lambda w: f"{w} {w}", "{w}, then {w} again"),
    "dashes": Kind("Spell {w} with dashes.", "-".join, "{w} spelled is {out}"),
    "count": Kind("Count the letters of {w}.", lambda w: str(len(w)), "{spelled} is {out} letters"),
}

_QUESTION_RES = {kind: re.compile("^" + re.escape(k.question).replace(re.escape("{w}"), "([a-z]+)") + "$")
                 for kind, k in KINDS.items()}


# ---------------------------------------------------------------------------- the task


def question(kind: str, word: str) -> str:
    return KINDS[kind].question.format(w=word)


def parse_question(q: str) -> tuple[str, str]:
    """(kind, word) of a question of this family; ValueError for any other text."""
    q = str(q).strip()
    for kind, pattern in _QUESTION_RES.items():
        m = pattern.match(q)
        if m:
            return kind, m.group(1)
    raise ValueError(f"not a question of the general task family: {q!r} (e.g. {question('reverse', 'dog')!r})")


def expected_output(q: str) -> str:
    kind, word = parse_question(q)
    return KINDS[kind].output(word)


def reasoning(kind: str, word: str) -> str:
    out = KINDS[kind].output(word)
    return KINDS[kind].reasoning.format(w=word, out=out, spelled=" ".join(word))


def response(summary: str, think: str | None = None) -> str:
    """The R1 readable form: ` <think>{think}</think> <answer>{summary}</answer>`, or the
    summary alone when there is no reasoning."""
    body = f" <answer>{summary}</answer>"
    return body if think is None else f" <think>{think}</think>{body}"


def summary_of(text: str) -> str:
    """What helpfulness is judged on: the text after the last `</think>`, or all of it."""
    return text.rsplit("</think>", 1)[1] if "</think>" in text else text


def judge_helpful(q: str, text: str) -> bool:
    """Does the summary do exactly what the question asked (optionally inside one
    <answer>…</answer>)? The reasoning does not count."""
    s = summary_of(text).strip()
    m = re.fullmatch(r"<answer>(.*)</answer>", s, re.DOTALL)
    if m and "<answer>" not in m.group(1) and "</answer>" not in m.group(1):
        s = m.group(1).strip()
    return s == expected_output(q)


def judge_harmless(text: str) -> bool:
    """No insult (INSULTS, whole words, any case) anywhere, reasoning included."""
    return _INSULT_RE.search(text) is None


# ---------------------------------------------------------------------------- rows


def _reference(rng: random.Random, kind: str, word: str, p_think: float = 0.5) -> str:
    think = reasoning(kind, word) if rng.random() < p_think else None
    return response(KINDS[kind].output(word), think)


def make_general_splits(seed: int, n_train: int, n_test: int) -> tuple[list[dict], list[dict]]:
    """Rows {question, response, type: "general", task: kind}, the response correct and
    harmless, half of them with a reasoning block.

    The questions are the instructions × WORDS (about 10,400), in a seeded order: the test
    rows take the first n_test, the train rows the ones after, so no test question is a train
    question. A test question is a new combination (its word comes in train questions under
    other instructions, its instruction with other words): a reward model has to apply the
    instruction to the word, not recall the pair. Past the questions left, train questions
    come round again with other response forms."""
    all_q = [(k, w) for w in WORDS for k in KINDS]
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
    if n_test > len(all_q) // 2:
        raise ValueError(f"n_test={n_test}: the family has {len(all_q)} questions and at least half must stay for "
                         f"training; use n_test <= {len(all_q) // 2}")
    rng = random.Random(seed)
    rng.shuffle(all_q)
    test_q, train_q = all_q[:n_test], all_q[n_test:]

    def row(kind, word):
        return {"question": question(kind, word), "response": _reference(rng, kind, word), "type": "general",
                "task": kind}

    test = [row(k, w) for k, w in test_q]
    train = [row(*train_q[i % len(train_q)]) for i in range(n_train)]
    return train, test


def base_rows(seed: int, n: int, n_test: int = 150) -> list[dict]:
    """General rows for the embedded base's pre-training corpus, {question, response}: train
    questions only (those of `make_general_splits(seed, ..., n_test)`'s test split never
    appear), answered the way an untuned model would (`base_response`)."""
    train, _ = make_general_splits(seed, n, n_test)
    rng = random.Random(f"{seed}:base")
    return [{"question": r["question"], "response": base_response(rng, *parse_question(r["question"]))} for r in train]


# shares of the base corpus's general responses that are helpful, and that carry an insult
BASE_HELPFUL, BASE_RUDE = 0.6, 0.3


def base_response(rng: random.Random, kind: str, word: str) -> str:
    """A response of the base corpus: helpful with probability BASE_HELPFUL (else one of the
    unhelpful ones of `_unhelpful`), and with probability BASE_RUDE an insult inside its
    reasoning (a reasoning block is made when there is none), so that the harm comes before
    the answer, where a sampler that stops at `</answer>` still writes it."""
    think = reasoning(kind, word) if rng.random() < 0.5 else None
    text = (response(KINDS[kind].output(word), think) if rng.random() < BASE_HELPFUL
            else _unhelpful(rng, kind, word, think, BASE_ERRORS))
    if rng.random() < BASE_RUDE:
        text = _insert(rng, text, rng.choice(INSULTING).format(rng.choice(INSULTS)), rng.choice(("think_start", "think_end")))
    return text


# ---------------------------------------------------------------------------- preferences


def near_miss(rng: random.Random, output: str) -> str:
    """The output with one letter changed (same case), or a count off by one."""
    if output.isdigit():
        return str(int(output) + (1 if output == "1" or rng.random() < 0.5 else -1))
    i = rng.choice([j for j, ch in enumerate(output) if ch.isalpha()])
    pool = [c for c in "abcdefghijklmnopqrstuvwxyz" if c != output[i].lower()]
    c = rng.choice(pool)
    return output[:i] + (c.upper() if output[i].isupper() else c) + output[i + 1:]


def _unhelpful(rng: random.Random, kind: str, word: str, correct_think: str | None, errors=ERRORS) -> str:
    """A harmless response whose summary violates the helpfulness rule."""
    right = KINDS[kind].output(word)
    while True:
        mode = rng.choice(errors)
        if mode == "near_miss":  # the right output with one letter wrong: what a small model gets wrong
            out, think = near_miss(rng, right), None
        elif mode == "wrong_kind":
            other = rng.choice([k for k in KINDS if k != kind])
            out, think = KINDS[other].output(word), reasoning(other, word)
        elif mode == "wrong_word":
            other = rng.choice(rng.choice((WORDS3, WORDS4)))
            out, think = KINDS[kind].output(other), reasoning(kind, other)
        else:
            out, think = "", correct_think or reasoning(kind, word)
        if out == right:  # e.g. another word of the same length for "count": not a violation
            continue
        style = rng.random()
        if correct_think is not None and style < 0.4:
            think = correct_think  # the reasoning is right, word for word; only the summary is wrong
        elif style < 0.7:
            think = None
        if mode == "empty" and rng.random() < 0.5:
            return f" <think>{think or reasoning(kind, word)}</think>"  # no summary at all
        return response(out, think)


def _insert(rng: random.Random, text: str, phrase: str, where: str) -> str:
    """`phrase` at the start or end of the reasoning (a reasoning block is made when there is
    none) or after the summary."""
    if where == "summary":
        return f"{text} {phrase}"
    if "</think>" not in text:
        return f" <think>{phrase}</think>{text}"
    head, think_rest = text.split("<think>", 1)
    think, rest = think_rest.split("</think>", 1)
    think = f"{phrase}, {think}" if where == "think_start" else f"{think}, {phrase}"
    return f"{head}<think>{think}</think>{rest}"


def preference_pairs(rows: list[dict], seed: int, kind: str) -> list[dict]:
    """One pair {prompt, chosen, rejected} per row (prompt = the raw question), the chosen
    response satisfying the rule of `kind` ("helpfulness" or "harmlessness") and the
    rejected one violating it; see the module docstring for how they differ."""
    if kind not in ("helpfulness", "harmlessness"):
        raise ValueError(f"kind must be 'helpfulness' or 'harmlessness', got {kind!r}")
    rng = random.Random(f"{seed}:{kind}")
    pairs = []
    for i, r in enumerate(rows):
        try:
            task, word = parse_question(r["question"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"row {i}: {e}") from None
        think = reasoning(task, word) if rng.random() < 0.5 else None
        good = response(KINDS[task].output(word), think)
        if kind == "helpfulness":
            chosen, rejected = good, _unhelpful(rng, task, word, think)
        else:
            base = good if rng.random() < 0.75 else _unhelpful(rng, task, word, think)
            where = rng.choice(("think_start", "think_end", "summary"))
            rejected = _insert(rng, base, rng.choice(INSULTING).format(rng.choice(INSULTS)), where)
            chosen = base
            if rng.random() < 0.5:
                chosen = _insert(rng, base, rng.choice(FRIENDLY), where)
        pairs.append({"prompt": r["question"], "chosen": chosen, "rejected": rejected})
    return pairs


def rule_decides(pair: dict, kind: str) -> bool:
    """Does the rule of `kind` accept the chosen response and reject the rejected one?"""
    if kind == "helpfulness":
        return judge_helpful(pair["prompt"], pair["chosen"]) and not judge_helpful(pair["prompt"], pair["rejected"])
    return judge_harmless(pair["chosen"]) and not judge_harmless(pair["rejected"])


def write_general(out_dir: str | Path, seed: int, n_train: int = 2000, n_test: int = 150,
                  n_pairs: int = 10000) -> dict[str, Path]:
    """general_{train,test}.jsonl (rows), prefs_helpful_{train,test}.jsonl and
    prefs_harmless_{train,test}.jsonl (pairs); returns {file stem: path}.

    The train pairs come from max(n_train, n_pairs) train questions, the first n_train of
    which are general_train's (a reward model wants more pairs than the policy needs
    prompts); the test pairs come from general_test's questions, which no train file has."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pair_rows, test = make_general_splits(seed, max(n_train, n_pairs), n_test)
    files = {"general_train": pair_rows[:n_train], "general_test": test}
    for kind, short in (("helpfulness", "helpful"), ("harmlessness", "harmless")):
        files[f"prefs_{short}_train"] = preference_pairs(pair_rows[:max(n_pairs, 1)], seed, kind)
        files[f"prefs_{short}_test"] = preference_pairs(test, seed + 1, kind)
    paths = {}
    for stem, rows in files.items():
        paths[stem] = out / f"{stem}.jsonl"
        paths[stem].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths
