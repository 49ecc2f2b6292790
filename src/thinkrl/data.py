"""Questions with reference answers, and the seeded order they are drawn in.

A dataset is a list of rows (dicts) with at least a question and an answer; every other
column travels along to the reward functions as a keyword argument (TRL's contract).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path


log = logging.getLogger("thinkrl")


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


def load_jsonl(path: str | Path, question_field: str = "question", answer_field: str = "answer",
               on_bad_row: str = "error") -> list[dict]:
    """Rows with `question` and `answer` (renamed from the mapped fields). A line that is not a
    JSON object, or lacks a mapped field, raises DataError naming the file and line; with
    on_bad_row="skip" it is skipped instead and the skipped lines are counted in a warning."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    rows, bad = [], []
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problem = None if isinstance(row, dict) else "each line must be a JSON object"
            except json.JSONDecodeError as e:
                row, problem = None, f"not valid JSON ({e.msg})"
            if problem is None:
                missing = [f_name for f_name in (question_field, answer_field) if f_name not in row]
                if missing:
                    problem = (f"missing field {missing[0]!r} (fields present: {sorted(row)}); "
                               f"set data.question_field / data.answer_field to map your columns")
            if problem is not None:
                if on_bad_row != "skip":
                    raise DataError(f"{path}:{lineno}: {problem}; or set data.on_bad_row=skip to skip such lines")
                bad.append((lineno, problem))
                continue
            row = dict(row)
            row["question"], row["answer"] = str(row.pop(question_field)), str(row.pop(answer_field))
            rows.append(row)
    if bad:
        log.warning("%s: skipped %d bad line(s) (data.on_bad_row=skip): %s", path, len(bad),
                    "; ".join(f"line {n}: {why}" for n, why in bad[:5]) + (" ..." if len(bad) > 5 else ""))
    if not rows:
        raise DataError(f"{path}: the dataset is empty" + (f" after skipping {len(bad)} bad line(s)" if bad else ""))
    return rows


def load_dataset(spec: str, split: str, question_field="question", answer_field="answer",
                 on_bad_row: str = "error") -> list[dict]:
    """spec: "embedded" (the tiny model's task, split train/test) or a JSONL path."""
    if spec == "embedded":
        from .task import TINY_DIR

        return load_jsonl(TINY_DIR / f"{split}.jsonl")
    return load_jsonl(spec, question_field, answer_field, on_bad_row)


class PromptSampler:
    """Draws questions without replacement in a seeded order, epoch after epoch.

    Its whole state is (seed, epoch, position), so a resumed run draws exactly the
    questions the interrupted run would have drawn.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch, self.pos = size, seed, 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(self.size))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.size:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(k - len(out), self.size - self.pos)
            out += self._order[self.pos: self.pos + take]
            self.pos += take
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size:
            raise DataError(f"the checkpoint was made on a dataset of {state['size']} rows, this one has {self.size}")
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]
        self._order = self._permutation()
