"""The sources a dataset can come from besides a JSONL file, and their rows as plain Python.

    hf:ID[?config=NAME&split=NAME]   a Hugging Face hub dataset, through datasets.load_dataset(ID,
                                     NAME, split=NAME); ID may also be a local folder of data files
    DIR                              a directory written by datasets' save_to_disk: a Dataset, or a
                                     DatasetDict (the caller's split is read)
    FILE.parquet                     a parquet file
    FILE.json                        an array of JSON objects, or JSON lines (read as JSONL)
    anything else                    JSONL (thinkrl.data.read_jsonl)

`thinkrl.data.read_records` is the reader every command uses; it dispatches here. Rows come
back as plain Python values (dict, list, str, int, float, bool, None), whatever the source
stored (numpy arrays and scalars from a formatted Dataset, dates as text), so the reward
functions get what they would get from JSONL and json.dumps works on every row.

`datasets` and `pyarrow` are optional (pip install 'thinkrl[datasets]'): imported here, in the
function that needs them, so that JSONL needs neither.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qsl


class DataError(ValueError):
    """Bad input data; the message names the source and the line or row."""


FORMATS = ("a JSONL file, a JSON file (an array of objects, or JSON lines), a parquet file, a directory written "
           "by datasets' save_to_disk, or hf:ID[?config=NAME&split=NAME]")
INSTALL = "pip install 'thinkrl[datasets]' (or pip install datasets)"
HUB_OPTIONS = ("config", "split")
NOT_READ = {".csv": "CSV", ".tsv": "TSV", ".arrow": "Arrow", ".feather": "Feather", ".xlsx": "Excel"}


def source_kind(spec: str | Path) -> str:
    """"hf", "disk" (a directory), "parquet", "json" or "jsonl" (any other file name)."""
    text = str(spec)
    if text.startswith("hf:"):
        return "hf"
    path = Path(text)
    if path.is_dir():
        return "disk"
    suffix = path.suffix.lower()
    if suffix in NOT_READ:
        raise DataError(f"{path}: {NOT_READ[suffix]} files are not read directly; give {FORMATS}. hf:DIR reads a "
                        f"folder of {NOT_READ[suffix]} files through datasets.load_dataset")
    return {".parquet": "parquet", ".json": "json"}.get(suffix, "jsonl")


def read_table(spec: str | Path, kind: str, split: str) -> tuple[str, list]:
    """(label naming the source in messages, records) of an "hf", "disk" or "parquet" source;
    records are plain Python (see `plain`), one per row, in order."""
    if kind == "hf":
        label, records = hub_records(str(spec), split)
    elif kind == "disk":
        label, records = disk_records(Path(spec), split)
    elif kind == "parquet":
        label, records = str(spec), parquet_records(Path(spec))
    else:
        raise ValueError(f"not a table source: {kind}")
    return label, [plain(r) for r in records]


def parse_hub(spec: str) -> tuple[str, dict[str, str]]:
    """(dataset id, options) of "hf:ID[?config=NAME&split=NAME]"."""
    ident, _, query = spec[len("hf:"):].partition("?")
    example = "e.g. hf:openai/gsm8k?config=main&split=train"
    if not ident:
        raise DataError(f"{spec!r}: name a dataset after hf:, {example}")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise DataError(f"{spec!r}: write the options as ?config=NAME&split=NAME ({example})") from None
    options: dict[str, str] = {}
    for key, value in pairs:
        if key not in HUB_OPTIONS:
            raise DataError(f"{spec!r}: unknown option {key!r}; hf: takes {' and '.join(HUB_OPTIONS)} only "
                            f"({example}); map columns with data.question_field / data.answer_field")
        if key in options or not value:
            raise DataError(f"{spec!r}: give {key} once, with a value ({example})")
        options[key] = value
    return ident, options


def _datasets(what: str):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{what} needs the `datasets` package, which is not installed: {INSTALL}") from None
    return datasets


def hub_records(spec: str, split: str) -> tuple[str, list]:
    """Rows of a hub dataset (or of a local folder given as its id); `split` unless the spec
    names one."""
    ident, options = parse_hub(spec)
    label = spec if "split" in options else f"{spec} (split {split})"
    split = options.get("split", split)
    if ident.startswith(("/", ".", "~")) and not Path(ident).expanduser().is_dir():
        raise DataError(f"{label}: no such directory {ident!r} (after hf:, a local folder of data files or a hub id)")
    datasets = _datasets(label)
    try:
        data = datasets.load_dataset(ident, options.get("config"), split=split)
    except ValueError as e:  # the dataset was found: an unknown split or config, a config required
        raise DataError(f"{label}: {str(e).rstrip('.')}; choose with ?config=NAME&split=NAME") from None
    except Exception as e:  # ConnectionError (offline), not found, HTTP errors: the hub's own types
        raise DataError(f"{label}: could not load {ident!r} ({type(e).__name__}: {e}). The Hugging Face hub may be "
                        "unreachable (no network, or HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set without a cached copy), "
                        "or the id is wrong. Load it where the hub is reachable and give a local copy instead: a "
                        "directory written by save_to_disk, a parquet or JSONL file, or hf:DIR for a folder of data "
                        "files") from None
    return label, data.to_list()


def disk_records(path: Path, split: str) -> tuple[str, list]:
    """Rows of a save_to_disk directory: a Dataset, or the `split` of a DatasetDict."""
    if not ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise DataError(f"{path}: a directory, but not one written by datasets' save_to_disk (it has no state.json "
                        f"or dataset_dict.json); for a folder of data files (JSONL, parquet, CSV) give hf:{path}")
    datasets = _datasets(f"{path} (a save_to_disk directory)")
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            names = list(data)
            raise DataError(f"{path}: a DatasetDict without a {split!r} split (its splits: {', '.join(names)}); give "
                            f"the directory of the split to read, e.g. {path / names[0]}")
        return f"{path} (split {split})", data[split].to_list()
    return str(path), data.to_list()


def parquet_records(path: Path) -> list:
    """Rows of a parquet file, read by pyarrow: no copy into the datasets cache, and the
    values come back as Python objects."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow, which is not installed: pip install "
                        "'thinkrl[datasets]' (or pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow.ArrowInvalid and kin
        raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    return table.to_pylist()


def json_array(path: Path) -> list | None:
    """The records of a JSON file holding an array, or None when it holds JSON lines."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte offset {e.start}); save the file as UTF-8") from None
    if not text.lstrip().startswith("["):
        return None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(records, list):  # "[1] [2]" and the like
        raise DataError(f"{path}: a JSON file must hold one array of objects, or one object per line")
    return records


def plain(value):
    """`value` as JSON-native Python: numpy arrays and scalars (anything with .tolist())
    become lists and Python numbers, tuples lists, mapping keys strings; other objects
    (dates, decimals, bytes) their text."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):
        return plain(value.tolist())
    if isinstance(value, (str, int, float)):  # subclasses without tolist (a bool is an int)
        return (bool if isinstance(value, bool) else str if isinstance(value, str) else
                int if isinstance(value, int) else float)(value)
    return str(value)
