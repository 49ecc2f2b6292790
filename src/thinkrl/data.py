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


def read_jsonl(path: str | Path, check, on_bad_row: str = "error", empty: str = "the dataset is empty",
               what: str = "") -> tuple[list[tuple[int, dict]], int]:
    """([(line number, row)] for every usable line, number of bad lines skipped) of a JSONL file: the one reader behind every
    dataset thinkrl loads. `check(row)` says why a parsed JSON object is not usable (None if it
    is). A bad line (not UTF-8, not JSON, not an object, refused by `check`) raises DataError naming the
    file and line; with on_bad_row="skip" it is skipped and counted in a warning. No usable line
    at all raises DataError with `empty`; a missing file names `what` the path should be."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" + (f" ({what})" if what else ""))
    rows, bad = [], []
    with path.open("rb") as f:  # decoded line by line: a line that is not UTF-8 is a bad line, never replaced
        for lineno, raw in enumerate(f, 1):
            line, problem = decode_line(raw)
            row = None
            if problem is None:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    problem = check(row) if isinstance(row, dict) else "each line must be a JSON object"
                except json.JSONDecodeError as e:
                    problem = f"not valid JSON ({e.msg})"
            if problem is not None:
                if on_bad_row != "skip":
                    raise DataError(f"{path}:{lineno}: {problem}; or set data.on_bad_row=skip to skip such lines")
                bad.append((lineno, problem))
                continue
            rows.append((lineno, row))
    if bad:
        log.warning("%s: skipped %d bad line(s) (data.on_bad_row=skip): %s", path, len(bad),
                    "; ".join(f"line {n}: {why}" for n, why in bad[:5]) + (" ..." if len(bad) > 5 else ""))
    if not rows:
        raise DataError(f"{path}: {empty}" + (f" after skipping {len(bad)} bad line(s)" if bad else ""))
    return rows, len(bad)


def decode_line(raw: bytes) -> tuple[str, str | None]:
    """(text, None) for a line of UTF-8, ("", why) for one that is not."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return "", f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); save the file as UTF-8"


def missing_field(row: dict, fields, hint: str) -> str | None:
    """The usual `check` for required columns: names the first one missing (or null) and the
    fields present."""
    missing = [name for name in fields if name not in row]
    if missing:
        return f"missing field {missing[0]!r} (fields present: {sorted(row)}); {hint}"
    null = [name for name in fields if row[name] is None]
    return f"field {null[0]!r} is null; give it a value, or drop the row" if null else None


def load_jsonl(path: str | Path, question_field: str = "question", answer_field: str = "answer",
               on_bad_row: str = "error") -> list[dict]:
    """Rows with `question` and `answer` (renamed from the mapped fields). A line that is not a
    JSON object, or lacks a mapped field, raises DataError naming the file and line; with
    on_bad_row="skip" it is skipped instead and the skipped lines are counted in a warning."""
    hint = "set data.question_field / data.answer_field to map your columns"
    out = []
    rows, _ = read_jsonl(path, lambda r: missing_field(r, (question_field, answer_field), hint), on_bad_row)
    for _, row in rows:
        row = dict(row)
        row["question"], row["answer"] = str(row.pop(question_field)), str(row.pop(answer_field))
        out.append(row)
    return out


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
