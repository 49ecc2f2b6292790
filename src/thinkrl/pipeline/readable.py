"""The readable form of a chain of thought (R1 stage 1, the cold start; `coldstart` says what
it is and why): a completion's reasoning rewritten as `ReadableConfig.template`, and the
few-shot prompts whose worked examples are written in it."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..config import ConfigError
from ..data import DataError, load_dataset
from ..task.arithmetic import working
from ..template import R1_ZERO


@dataclass
class ReadableConfig:
    reasoning_open: str = "<think>"
    reasoning_close: str = "</think>"
    summary: str = "So the answer is {answer}."
    # must end with the answer block, which the accuracy reward reads
    template: str = " {open}{reasoning}{close} {summary} <answer>{answer}</answer>"


def validate_readable(r: ReadableConfig) -> list[str]:
    errors = []
    if not r.reasoning_open.strip() or not r.reasoning_close.strip():
        errors.append("readable.reasoning_open and readable.reasoning_close must be non-blank markers")
    if not r.template.rstrip().endswith("<answer>{answer}</answer>"):
        errors.append(f"readable.template {r.template!r} must end with <answer>{{answer}}</answer> "
                      "so the accuracy reward reads the answer")
    if "{reasoning}" not in r.template:
        errors.append("readable.template must contain {reasoning}")
    try:
        r.template.format(open="", reasoning="", close="", summary="", answer="")
        r.summary.format(answer="")
    except (KeyError, IndexError, ValueError) as e:
        errors.append(f"readable.template / readable.summary: bad placeholder {e}; "
                      "use only {open} {reasoning} {close} {summary} {answer} (and {answer} in the summary)")
    if "<answer>" in r.summary or "</answer>" in r.summary or "<think>" in r.summary:
        errors.append("readable.summary must not contain <answer> or <think> tags (the template adds the answer block)")
    return errors


def normalise_whitespace(text: str) -> str:
    """Runs of spaces and tabs become one space, lines are stripped, several blank lines
    become one, and the ends are stripped."""
    lines = [" ".join(ln.split()) for ln in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def write_readable(reasoning: str, answer: str, cfg: ReadableConfig) -> str:
    """The readable form of a reasoning and its final answer."""
    answer = " ".join(str(answer).split())
    return cfg.template.format(open=cfg.reasoning_open, reasoning=reasoning, close=cfg.reasoning_close,
                               summary=cfg.summary.format(answer=answer), answer=answer)


def readable(completion: str, answer: str, cfg: ReadableConfig | None = None) -> str | None:
    """A completion rewritten into the readable form (`coldstart`'s docstring), or None when it has
    no usable reasoning: not exactly one <think>…</think> block in that order, blank
    reasoning, or reasoning that holds an answer tag or the output markers. Pure: the caller
    decides correctness and passes the `answer` to write (the completion's own answer, checked
    against the reference)."""
    cfg = cfg or ReadableConfig()
    if completion.count("<think>") != 1 or completion.count("</think>") != 1:
        return None
    start, end = completion.index("<think>") + len("<think>"), completion.index("</think>")
    if end < start:
        return None
    reasoning = normalise_whitespace(completion[start:end])
    if not reasoning or not str(answer).strip():
        return None
    if any(t in reasoning for t in ("<answer>", "</answer>", cfg.reasoning_open, cfg.reasoning_close)):
        return None
    return write_readable(reasoning, answer, cfg)


# ---------------------------------------------------------------------------- few-shot prompts

_EMBEDDED_Q = re.compile(r"What is (\d+)\+(\d+)\?")


def embedded_worked_example(question: str, answer: str) -> str | None:
    """The reasoning of a worked example for an embedded-task row: the column working (every
    carry written), then a verification step that subtracts back. None for other rows."""
    m = _EMBEDDED_Q.fullmatch(question.strip())
    if not m:
        return None
    a, b = int(m.group(1)), int(m.group(2))
    steps, total = working(a, b, "correct")
    if total != str(answer).strip():
        return None
    return f"{steps} check {total}-{b}={a}"


def load_worked_examples(spec: str) -> list[dict]:
    """Rows {question, reasoning, answer}: from the embedded train split, or a JSONL file
    with those three fields."""
    if spec == "embedded":
        out = []
        for r in load_dataset("embedded", "train"):
            reasoning = embedded_worked_example(r["question"], r["answer"])
            if reasoning is not None:
                out.append({"question": r["question"], "reasoning": reasoning, "answer": r["answer"]})
        return out
    rows = load_dataset(spec, "train")
    for i, r in enumerate(rows):
        if not str(r.get("reasoning", "")).strip():
            raise DataError(f"{spec}: worked example {i + 1} has no 'reasoning' field (want question, reasoning, answer)")
    return rows


def few_shot_prompt(question: str, examples: list[dict], cfg: ReadableConfig) -> str:
    """The R1-Zero instruction, then each worked example as `User: q. Assistant: <readable>`,
    then the question, ending in "Assistant:" as the R1-Zero template does."""
    head = R1_ZERO.split("User: {prompt}")[0]
    shots = "".join(f"User: {e['question']}. Assistant:{write_readable(e['reasoning'], e['answer'], cfg)} "
                    for e in examples)
    return f"{head}{shots}User: {question}. Assistant:"


def build_few_shot_rows(rows: list[dict], pool: list[dict], shots: int, cfg: ReadableConfig, seed: int) -> list[dict]:
    """Each row's question replaced by its few-shot prompt (the question kept in
    `cold_question`); the examples, other questions than the row's own, drawn with the seed."""
    if len(pool) <= shots:
        raise ConfigError(f"few_shot.shots={shots} but only {len(pool)} worked examples are available; "
                          "lower few_shot.shots or give more examples")
    out = []
    for i, r in enumerate(rows):
        rng = random.Random(seed * 1_000_003 + i)
        picked = [e for e in rng.sample(pool, shots + 1) if e["question"] != r["question"]][:shots]
        out.append(dict(r, cold_question=r["question"], question=few_shot_prompt(r["question"], picked, cfg)))
    return out
