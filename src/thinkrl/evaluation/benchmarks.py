"""Benchmarks, each loaded into the same rows:

    {"id", "question", "answer", "kind": "math" | "code", ["level"], ...}

`answer` is the final answer (`rewards.math.reference_answer` of the reference: the number
after `####`, the last \\boxed{…}, …), with the worked solution kept as `solution` where the
source has one. Code rows add `prompt` (the code to complete), `tests` (test code defining
`check(candidate)`) and `entry_point` (the function's name); their `answer` is the reference
program (prompt + canonical solution).

Names (`load_benchmark(name)`):

    gsm8k          <data_dir>/gsm8k/test.jsonl             question, answer (ends `#### N`)
    math500        <data_dir>/math500/test.jsonl           question|problem, answer, [solution,
                                                           level, subject, unique_id]
    humaneval      <data_dir>/humaneval/HumanEval.jsonl.gz task_id, prompt, canonical_solution,
                                                           test, entry_point
    aime           <data_dir>/aime/*.jsonl (all of them)   problem|question, answer (integer
    aime:PATH      a JSONL file, or a folder of them       0-999), [id]
    embedded       the tiny model's held-out test split    question, answer, level
    jsonl:PATH     any JSONL file (.gz too), math rows     question, answer, [level, id, subject]
    jsonl:PATH?question=problem&answer=solution&level=difficulty
                   the same with a field map: our field = the file's column, for any of
                   question, answer, level, id, subject; a mapped field must be in every row.
                   The file's other columns travel along unchanged.

`data_dir` defaults to `$THINKRL_DATA`, else `../shared/data` from the current directory
when it exists, else the `shared/data` beside the repository. Where a built-in benchmark's
file is missing and `allow_hub` is true, its usual Hugging Face hub copy is loaded through
`datasets.load_dataset`, if the `datasets` package is installed (it is not a dependency);
hub rows go through the same row parser as local ones. Bad data (a line that is not a JSON
object, a missing field, an AIME answer that is not an integer 0-999) raises
`thinkrl.data.DataError` naming the file and line.
"""

from __future__ import annotations

import difflib
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qsl

from thinkrl.data import DataError
from thinkrl.rewards.math import reference_answer

BENCHMARKS = ("gsm8k", "math500", "humaneval", "aime", "embedded")
PATH_SPECS = ("aime:PATH", "jsonl:PATH", "jsonl:PATH?question=COLUMN&answer=COLUMN")
MAPPABLE = ("question", "answer", "level", "id", "subject")

HUMANEVAL_INSTRUCTION = ("Complete the following Python function. Reply with the whole function, "
                         "its signature included, in one ```python code block.")


def default_data_dir() -> Path:
    """`$THINKRL_DATA`, else `../shared/data` from the current directory if it exists, else the
    `shared/data` beside this repository's checkout."""
    if os.environ.get("THINKRL_DATA"):
        return Path(os.environ["THINKRL_DATA"])
    here = Path.cwd().parent / "shared" / "data"
    if here.is_dir():
        return here
    # src/thinkrl/evaluation/benchmarks.py: parents[3] is the checkout, its parent holds shared/
    return Path(__file__).resolve().parents[4] / "shared" / "data"


# ---------------------------------------------------------------- row parsers (local and hub rows alike)


def _field(raw: dict, names: tuple[str, ...], where: str):
    for name in names:
        if raw.get(name) is not None:
            return raw[name]
    raise DataError(f"{where}: missing field {' or '.join(repr(n) for n in names)} "
                    f"(fields present: {sorted(raw)})")


def _math_row(row_id: str, question, reference, where: str, **extra) -> dict:
    question = str(question).strip()
    if not question:
        raise DataError(f"{where}: empty question")
    answer = reference_answer(reference)
    if answer is None:
        raise DataError(f"{where}: empty answer")
    row = {"id": row_id, "question": question, "answer": answer, "kind": "math"}
    row.update({k: v for k, v in extra.items() if v is not None})
    if str(reference).strip() != answer:
        row.setdefault("solution", str(reference))
    return row


def _gsm8k_row(raw: dict, where: str, index: int) -> dict:
    return _math_row(f"gsm8k/{index}", _field(raw, ("question",), where), _field(raw, ("answer",), where), where)


def _math500_row(raw: dict, where: str, index: int) -> dict:
    # local rows: answer = the worked solution; hub rows: answer = the final answer, solution apart
    return _math_row(str(raw.get("unique_id") or f"math500/{index}"), _field(raw, ("problem", "question"), where),
                     _field(raw, ("answer",), where), where, solution=raw.get("solution"),
                     level=raw.get("level"), subject=raw.get("subject"))


def _aime_row(raw: dict, where: str, index: int) -> dict:
    answer = _field(raw, ("answer",), where)
    text = str(answer).strip()
    is_integer = (isinstance(answer, int) and not isinstance(answer, bool)) or (text.isascii() and text.isdigit())
    if not is_integer or not 0 <= int(text) <= 999:
        raise DataError(f"{where}: an AIME answer is an integer from 0 to 999, got {answer!r}")
    row_id = raw.get("id")
    return _math_row(f"aime/{index}" if row_id is None else str(row_id),
                     _field(raw, ("problem", "question"), where), str(int(text)), where)


def _embedded_row(raw: dict, where: str, index: int) -> dict:
    return _math_row(f"embedded/{index}", _field(raw, ("question",), where), _field(raw, ("answer",), where),
                     where, level=_field(raw, ("level",), where))


def _humaneval_row(raw: dict, where: str, index: int) -> dict:
    task_id, prompt, solution, tests, entry_point = (
        str(_field(raw, (name,), where))
        for name in ("task_id", "prompt", "canonical_solution", "test", "entry_point"))
    return {"id": task_id, "question": f"{HUMANEVAL_INSTRUCTION}\n\n```python\n{prompt.rstrip()}\n```",
            "answer": prompt + solution, "kind": "code", "prompt": prompt, "tests": tests, "entry_point": entry_point}


def _jsonl_parser(path: Path, fields: dict[str, str]) -> Callable[[dict, str, int], dict]:
    """The parser of a `jsonl:` file: mapped fields required, the others used when present,
    unused columns carried along."""
    def parse(raw: dict, where: str, index: int) -> dict:
        got = {}
        for ours in MAPPABLE:
            theirs = fields.get(ours, ours)
            if ours in fields or ours in ("question", "answer"):
                got[ours] = _field(raw, (theirs,), where)
            elif raw.get(theirs) is not None:
                got[ours] = raw[theirs]
        used = {fields.get(ours, ours) for ours in got}
        row = _math_row(str(got.get("id", f"{path.stem}/{index}")), got["question"], got["answer"], where,
                        level=got.get("level"), subject=got.get("subject"))
        for k, v in raw.items():
            if k not in used:
                row.setdefault(k, v)
        return row

    return parse


# ---------------------------------------------------------------- where rows come from


@dataclass(frozen=True)
class _Source:
    files: Callable[[Path], list[Path]]  # data_dir -> the files, in order
    looked_for: str  # where, for the error message, relative to data_dir
    what: str  # what to put there
    parse: Callable[[dict, str, int], dict]
    hub: tuple[str, str | None, str] | None  # (dataset, config, split)


def _aime_files(where: Path) -> list[Path]:
    if where.is_dir():
        return sorted(where.glob("*.jsonl")) + sorted(where.glob("*.jsonl.gz"))
    return [where] if where.exists() else []


def _existing(path: Path) -> list[Path]:
    return [path] if path.exists() else []


_BUILTIN = {
    "gsm8k": _Source(lambda d: _existing(d / "gsm8k" / "test.jsonl"), "gsm8k/test.jsonl",
                     "the GSM8K test split (JSONL: question, answer ending in `#### N`)", _gsm8k_row,
                     ("openai/gsm8k", "main", "test")),
    "math500": _Source(lambda d: _existing(d / "math500" / "test.jsonl"), "math500/test.jsonl",
                       "MATH-500 (JSONL: question or problem, answer)", _math500_row,
                       ("HuggingFaceH4/MATH-500", None, "test")),
    "humaneval": _Source(lambda d: _existing(d / "humaneval" / "HumanEval.jsonl.gz"), "humaneval/HumanEval.jsonl.gz",
                         "HumanEval (openai/human-eval's data/HumanEval.jsonl.gz)", _humaneval_row,
                         ("openai/openai_humaneval", None, "test")),
    "aime": _Source(lambda d: _aime_files(d / "aime"), "aime/*.jsonl",
                    "AIME problems (JSONL: problem or question, answer an integer 0-999)", _aime_row,
                    ("HuggingFaceH4/aime_2024", None, "train")),
}


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(raw, dict):
                raise DataError(f"{where}: each line must be a JSON object")
            yield where, raw


def _hub_records(dataset: str, config: str | None, split: str) -> Iterator[tuple[str, dict]]:
    from datasets import load_dataset  # not a dependency: the caller checked it imports

    for i, raw in enumerate(load_dataset(dataset, config, split=split)):
        yield f"{dataset} ({split} split) row {i}", dict(raw)


def _hub_available() -> bool:
    try:
        import datasets  # noqa: F401
    except ImportError:
        return False
    return True


def _collect(records: Iterator[tuple[str, dict]], parse: Callable[[dict, str, int], dict],
             limit: int | None) -> list[dict]:
    rows: list[dict] = []
    for where, raw in records:
        if limit is not None and len(rows) >= limit:
            break
        rows.append(parse(raw, where, len(rows)))
    return rows


def _from_files(files: list[Path], parse, limit: int | None) -> list[dict]:
    def records():
        for path in files:
            yield from _jsonl_records(path)

    rows = _collect(records(), parse, limit)
    if not rows:
        raise DataError(f"{', '.join(map(str, files))}: no rows")
    return rows


def _parse_spec(name: str) -> tuple[str, Path | None, dict[str, str]]:
    """(kind, path, field map) of a benchmark name."""
    kind, sep, rest = name.partition(":")
    if not sep:
        return name.lower(), None, {}
    kind = kind.lower()
    if kind not in ("aime", "jsonl") or not rest:
        raise ValueError(f"unknown benchmark {name!r}; use one of {', '.join(BENCHMARKS + PATH_SPECS)}")
    fields: dict[str, str] = {}
    if "?" in rest:
        if kind != "jsonl":
            raise ValueError(f"{name!r}: a field map (?question=COLUMN&...) is for jsonl:PATH only")
        rest, query = rest.rsplit("?", 1)
        try:
            pairs = parse_qsl(query, keep_blank_values=False, strict_parsing=True)
        except ValueError:
            raise ValueError(f"{name!r}: write the field map as ?question=COLUMN&answer=COLUMN "
                             f"(fields: {', '.join(MAPPABLE)})") from None
        for ours, theirs in pairs:
            if ours not in MAPPABLE:
                raise ValueError(f"{name!r}: cannot map {ours!r}; the fields are {', '.join(MAPPABLE)}")
            fields[ours] = theirs
    return kind, Path(rest).expanduser(), fields


def load_benchmark(name: str, data_dir: str | Path | None = None, limit: int | None = None,
                   allow_hub: bool = True) -> list[dict]:
    """The rows of benchmark `name` (see the module docstring for names, files and the row
    format), the first `limit` of them when given. `allow_hub=False` never reaches for the
    Hugging Face hub when a local file is missing."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (or None for all rows), got {limit}")
    kind, path, fields = _parse_spec(name)
    if path is not None:
        if kind == "aime":
            files = _aime_files(path)
            if not files:
                raise DataError(f"{path}: no such file, or a folder without *.jsonl files")
            return _from_files(files, _aime_row, limit)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        return _from_files([path], _jsonl_parser(path, fields), limit)
    if kind == "embedded":
        from thinkrl.task import TINY_DIR

        return _from_files([TINY_DIR / "test.jsonl"], _embedded_row, limit)
    if kind not in _BUILTIN:
        close = difflib.get_close_matches(kind, BENCHMARKS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown benchmark {name!r}; {hint}use one of {', '.join(BENCHMARKS + PATH_SPECS)}")

    source = _BUILTIN[kind]
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    files = source.files(data_dir)
    if files:
        return _from_files(files, source.parse, limit)
    missing = f"{kind}: no data at {data_dir / source.looked_for}"
    dataset, config, split = source.hub
    if allow_hub and _hub_available():
        try:
            rows = _collect(_hub_records(dataset, config, split), source.parse, limit)
        except DataError:
            raise
        except Exception as e:  # offline, no such dataset, ...: say what was tried
            raise DataError(f"{missing}, and loading {dataset} from the Hugging Face hub failed "
                            f"({type(e).__name__}: {e}); put {source.what} there, or point data_dir or "
                            f"$THINKRL_DATA at a folder that has it") from e
        if rows:
            return rows
    hub = (f", or `pip install datasets` to download {dataset} from the Hugging Face hub"
           if allow_hub and not _hub_available() else "")
    raise DataError(f"{missing}; put {source.what} there, or point data_dir or $THINKRL_DATA at a "
                    f"folder that has it{hub}")
