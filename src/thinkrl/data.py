"""Questions with reference answers, and the seeded order they are drawn in.

A dataset is a list of rows (dicts) with at least a question and an answer; every other
column travels along to the reward functions as a keyword argument (TRL's contract).
`read_records` reads the rows of every dataset thinkrl loads, from JSONL or any source of
`thinkrl.data_sources` (a hub dataset, a save_to_disk directory, parquet, JSON).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from .data_sources import DataError, json_array, read_table, source_kind


log = logging.getLogger("thinkrl")

__all__ = ["DataError", "PromptSampler", "decode_line", "load_dataset", "load_jsonl", "missing_field", "read_jsonl",
           "read_records"]


def read_records(source: str | Path, check, on_bad_row: str = "error", empty: str = "the dataset is empty",
                 what: str = "", split: str = "train") -> tuple[list[tuple[int, dict]], int]:
    """([(number, row)] for every usable row, number of bad rows skipped) of `source`: the one
    reader behind every dataset thinkrl loads. `source` is any of `data_sources.FORMATS` (a
    JSONL file, JSON, parquet, a save_to_disk directory, hf:ID); `split` is the split read from a
    hub dataset or a saved DatasetDict when the spec names none. Numbers are line numbers for
    JSONL (and JSON lines), row numbers from 1 otherwise. `check(row)` says why a row (a dict
    of plain Python values) is not usable (None if it is). A bad row raises DataError naming
    the source and line or row; with on_bad_row="skip" it is skipped and counted in a warning.
    No usable row at all raises DataError with `empty`; a missing file names `what` the path
    should be."""
    kind = source_kind(source)
    if kind in ("jsonl", "json", "parquet") and not Path(source).is_file():
        raise DataError(f"{source}: no such file" + (f" ({what})" if what else ""))
    records = json_array(Path(source)) if kind == "json" else None
    if kind == "jsonl" or kind == "json" and records is None:  # JSON lines
        return read_jsonl(source, check, on_bad_row, empty, what)
    label, records = (str(source), records) if kind == "json" else read_table(source, kind, split)
    items = ((n, row, None if isinstance(row, dict) else "each row must be a JSON object")
             for n, row in enumerate(records, 1))
    return _keep(items, check, on_bad_row, empty, label, "row", lambda n: f"{label}: row {n}")


def read_jsonl(path: str | Path, check, on_bad_row: str = "error", empty: str = "the dataset is empty",
               what: str = "") -> tuple[list[tuple[int, dict]], int]:
    """`read_records` of a JSONL file: a bad line (not UTF-8, not JSON, not an object, refused
    by `check`) is named by file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" + (f" ({what})" if what else ""))

    def lines():
        with path.open("rb") as f:  # decoded line by line: a line that is not UTF-8 is a bad line, never replaced
            for lineno, raw in enumerate(f, 1):
                line, problem = decode_line(raw)
                if problem is None and not line.strip():
                    continue
                row = None
                if problem is None:
                    try:
                        row = json.loads(line)
                        problem = None if isinstance(row, dict) else "each line must be a JSON object"
                    except json.JSONDecodeError as e:
                        problem = f"not valid JSON ({e.msg})"
                yield lineno, row, problem

    return _keep(lines(), check, on_bad_row, empty, str(path), "line", lambda n: f"{path}:{n}")


def _keep(items, check, on_bad_row: str, empty: str, source: str, unit: str,
          where) -> tuple[list[tuple[int, dict]], int]:
    """The usable (number, row) of `items` ((number, row, problem found already)); bad ones
    raise DataError at where(number), or are skipped and counted with on_bad_row="skip"."""
    rows, bad = [], []
    for n, row, problem in items:
        if problem is None:
            problem = check(row)
        if problem is not None:
            if on_bad_row != "skip":
                raise DataError(f"{where(n)}: {problem}; or set data.on_bad_row=skip to skip such {unit}s")
            bad.append((n, problem))
            continue
        rows.append((n, row))
    if bad:
        log.warning("%s: skipped %d bad %s(s) (data.on_bad_row=skip): %s", source, len(bad), unit,
                    "; ".join(f"{unit} {n}: {why}" for n, why in bad[:5]) + (" ..." if len(bad) > 5 else ""))
    if not rows:
        raise DataError(f"{source}: {empty}" + (f" after skipping {len(bad)} bad {unit}(s)" if bad else ""))
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
    """Rows with `question` and `answer` (renamed from the mapped fields) of a JSONL file. A
    line that is not a JSON object, or lacks a mapped field, raises DataError naming the file
    and line; with on_bad_row="skip" it is skipped instead and the skipped lines are counted
    in a warning. `load_dataset` reads every other source the same way."""
    return _questions(read_jsonl, path, question_field, answer_field, on_bad_row)


def load_dataset(spec: str, split: str, question_field="question", answer_field="answer",
                 on_bad_row: str = "error") -> list[dict]:
    """Question/answer rows as `load_jsonl` makes them, of spec: "embedded" (the tiny model's
    task, split train/test) or any source `read_records` reads (`data_sources.FORMATS`), its
    `split` where the spec (a hub dataset, a saved DatasetDict) names none."""
    if spec == "embedded":
        from .task import TINY_DIR

        return load_jsonl(TINY_DIR / f"{split}.jsonl")
    return _questions(lambda *a: read_records(*a, split=split), spec, question_field, answer_field, on_bad_row)


def _questions(reader, source, question_field: str, answer_field: str, on_bad_row: str) -> list[dict]:
    hint = "set data.question_field / data.answer_field to map your columns"
    rows, _ = reader(source, lambda r: missing_field(r, (question_field, answer_field), hint), on_bad_row)
    out = []
    for _, row in rows:
        row = dict(row)
        row["question"], row["answer"] = str(row.pop(question_field)), str(row.pop(answer_field))
        out.append(row)
    return out


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
