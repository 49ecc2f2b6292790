"""Benchmarks load into one row format: the real files in ../shared/data, the embedded task,
and files written here for the formats with no local data (AIME, any JSONL with a field map).
Nothing here reaches the network: the hub is only tried when a local file is missing, and
the tests of a missing file turn it off."""

import gzip
import json
import re
import sys
from pathlib import Path

import pytest

from thinkrl.data import DataError
from thinkrl.evaluation.benchmarks import BENCHMARKS, default_data_dir, load_benchmark
from thinkrl.rewards.math import _closing_answer, _plain_number
from thinkrl.task import TINY_DIR

from .shared_data import DATA, needs_data


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def check_uniform(rows, kind):
    assert rows
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["kind"] == kind
        assert isinstance(r["question"], str) and r["question"].strip()
        assert isinstance(r["answer"], str) and r["answer"].strip()


# ---------------------------------------------------------------- the real files


@needs_data
def test_gsm8k_loads_every_row_with_its_final_number():
    rows = load_benchmark("gsm8k", DATA, allow_hub=False)
    assert len(rows) == 1319
    check_uniform(rows, "math")
    assert rows[0]["question"].startswith("Janet’s ducks lay 16 eggs per day")
    assert rows[0]["answer"] == "18"
    assert rows[0]["solution"].endswith("#### 18")
    # every GSM8K answer is a plain number (thousands commas dropped)
    assert all(_plain_number(r["answer"]) is not None and "," not in r["answer"] for r in rows)


@needs_data
def test_math500_answer_is_the_boxed_one_and_agrees_with_the_closing_line():
    rows = load_benchmark("math500", DATA, allow_hub=False)
    assert len(rows) == 500
    check_uniform(rows, "math")
    assert rows[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    # the file ends each solution with `The answer is: X` too: an independent extraction
    assert all(r["answer"] == _closing_answer(r["solution"]) for r in rows)
    assert "level" not in rows[0]  # this copy has no levels; none are made up


@needs_data
def test_humaneval_rows_carry_prompt_tests_and_a_reference_that_passes_them():
    rows = load_benchmark("humaneval", DATA, allow_hub=False)
    assert len(rows) == 164
    check_uniform(rows, "code")
    assert [r["id"] for r in rows[:2]] == ["HumanEval/0", "HumanEval/1"]
    first = rows[0]
    assert first["entry_point"] == "has_close_elements"
    assert first["prompt"] in first["question"] and "Python function" in first["question"]
    assert "def check(candidate)" in first["tests"]
    for row in rows[:10]:  # the reference program passes the benchmark's own tests
        namespace = {}
        exec(row["answer"] + "\n" + row["tests"], namespace)
        namespace["check"](namespace[row["entry_point"]])


def test_embedded_is_the_tiny_task_held_out_split_with_levels():
    rows = load_benchmark("embedded")
    raw = [json.loads(line) for line in (TINY_DIR / "test.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == len(raw) == 300
    check_uniform(rows, "math")
    assert [(r["question"], r["answer"], r["level"]) for r in rows] == \
        [(r["question"], r["answer"], r["level"]) for r in raw]
    assert {r["level"] for r in rows} == {1, 2, 3, 4}


@needs_data
def test_limit_takes_the_first_rows():
    assert load_benchmark("gsm8k", DATA, limit=5) == load_benchmark("gsm8k", DATA)[:5]
    assert len(load_benchmark("humaneval", DATA, limit=3)) == 3
    assert len(load_benchmark("embedded", limit=1)) == 1
    with pytest.raises(ValueError, match="limit"):
        load_benchmark("embedded", limit=0)


# ---------------------------------------------------------------- where the data is


def test_data_dir_defaults_to_the_environment_then_the_working_directory_then_the_repository(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "env" / "gsm8k" / "test.jsonl", [{"question": "1+1?", "answer": "so #### 2"}])
    monkeypatch.setenv("THINKRL_DATA", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    assert [r["answer"] for r in load_benchmark("gsm8k")] == ["2"]

    monkeypatch.delenv("THINKRL_DATA")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")
    assert default_data_dir() == tmp_path / "shared" / "data"

    monkeypatch.chdir(tmp_path)  # no ../shared/data from here: the one beside this repository
    assert default_data_dir() == DATA


def test_a_missing_file_names_where_it_was_looked_for(tmp_path):
    with pytest.raises(DataError) as e:
        load_benchmark("math500", tmp_path / "nowhere", allow_hub=False)
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "math500" / "test.jsonl") in msg
    assert "THINKRL_DATA" in msg and "Hugging Face" not in msg


def test_without_the_datasets_package_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails
    with pytest.raises(DataError, match="pip install datasets.*openai/gsm8k"):
        load_benchmark("gsm8k", tmp_path)
    with pytest.raises(DataError, match=r"aime/\*\.jsonl"):
        load_benchmark("aime", tmp_path)


def test_unknown_benchmark_suggests_the_valid_names():
    with pytest.raises(ValueError, match="did you mean 'math500'") as e:
        load_benchmark("math-500")
    for name in BENCHMARKS + ("jsonl:PATH",):
        assert name in str(e.value)
    with pytest.raises(ValueError, match="unknown benchmark 'parquet:x'"):
        load_benchmark("parquet:x")


# ---------------------------------------------------------------- AIME and any JSONL, from files written here


def test_aime_file_with_integer_answers(tmp_path):
    path = write_jsonl(tmp_path / "aime24.jsonl", [
        {"id": 60, "problem": "Find the remainder ...", "answer": 204},
        {"question": "How many ...?", "answer": "033"},
        {"problem": "Find m+n.", "answer": " 0 ", "year": 2024},
    ])
    rows = load_benchmark(f"aime:{path}")
    check_uniform(rows, "math")
    assert [(r["id"], r["answer"]) for r in rows] == [("60", "204"), ("aime/1", "33"), ("aime/2", "0")]
    assert rows[1]["question"] == "How many ...?"


def test_aime_folder_in_the_data_dir_reads_every_file_in_order(tmp_path):
    write_jsonl(tmp_path / "aime" / "2025.jsonl", [{"problem": "b", "answer": 2}])
    write_jsonl(tmp_path / "aime" / "2024.jsonl", [{"problem": "a", "answer": 1}, {"problem": "a2", "answer": 11}])
    rows = load_benchmark("aime", tmp_path, allow_hub=False)
    assert [r["question"] for r in rows] == ["a", "a2", "b"]
    assert [r["id"] for r in rows] == ["aime/0", "aime/1", "aime/2"]
    assert load_benchmark(f"aime:{tmp_path / 'aime'}", limit=2) == rows[:2]


@pytest.mark.parametrize("answer", [1000, -1, "12.5", "x", True, "", "²"])
def test_aime_answers_outside_0_to_999_are_refused_with_file_and_line(tmp_path, answer):
    path = write_jsonl(tmp_path / "a.jsonl", [{"problem": "ok", "answer": 5}, {"problem": "bad", "answer": answer}])
    with pytest.raises(DataError, match=r"a\.jsonl:2: an AIME answer is an integer from 0 to 999"):
        load_benchmark(f"aime:{path}")


def test_jsonl_with_a_field_map(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"problem": "What is 2+3?", "solution": "2+3 = \\boxed{5}", "difficulty": 3, "source": "hand"},
        {"problem": "What is 1/2+1/2?", "solution": "1", "difficulty": 1, "source": "hand"},
    ])
    rows = load_benchmark(f"jsonl:{path}?question=problem&answer=solution&level=difficulty")
    check_uniform(rows, "math")
    assert rows[0] == {"id": "mine/0", "question": "What is 2+3?", "answer": "5", "kind": "math", "level": 3,
                       "solution": "2+3 = \\boxed{5}", "source": "hand"}
    assert rows[1]["answer"] == "1" and "solution" not in rows[1]


def test_jsonl_without_a_map_uses_the_usual_column_names(tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl", [{"question": "q", "answer": "#### 1,234", "id": "q-1", "level": 2}])
    assert load_benchmark(f"jsonl:{path}") == [
        {"id": "q-1", "question": "q", "answer": "1234", "kind": "math", "level": 2, "solution": "#### 1,234"}]


def test_a_mapped_field_missing_from_a_row_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"problem": "a", "answer": "1", "difficulty": 1},
                                              {"problem": "b", "answer": "2"}])
    with pytest.raises(DataError, match=r"m\.jsonl:2: missing field 'difficulty'"):
        load_benchmark(f"jsonl:{path}?question=problem&level=difficulty")


@pytest.mark.parametrize("query, match", [("colour=red", "cannot map 'colour'"), ("question", "field map")])
def test_a_bad_field_map_is_refused(tmp_path, query, match):
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "a", "answer": "1"}])
    with pytest.raises(ValueError, match=match):
        load_benchmark(f"jsonl:{path}?{query}")


# ---------------------------------------------------------------- bad data


def test_a_malformed_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k" / "test.jsonl",
                       [{"question": "a", "answer": "#### 1"}, "", '{"question": "b", "answer": ', "[1, 2]"])
    with pytest.raises(DataError, match=re.escape(f"{path}:3: not valid JSON")):
        load_benchmark("gsm8k", tmp_path, allow_hub=False)
    write_jsonl(path, [{"question": "a", "answer": "#### 1"}, "[1, 2]"])
    with pytest.raises(DataError, match=re.escape(f"{path}:2: each line must be a JSON object")):
        load_benchmark("gsm8k", tmp_path, allow_hub=False)


def test_a_missing_field_names_file_line_and_field(tmp_path):
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"question": "a", "answer": "#### 1"}, {"question": "b"}])
    with pytest.raises(DataError, match=r"test\.jsonl:2: missing field 'answer' \(fields present: \['question'\]\)"):
        load_benchmark("gsm8k", tmp_path, allow_hub=False)
    write_jsonl(tmp_path / "math500" / "test.jsonl", [{"answer": "\\boxed{1}"}])
    with pytest.raises(DataError, match=r"test\.jsonl:1: missing field 'problem' or 'question'"):
        load_benchmark("math500", tmp_path, allow_hub=False)


def test_humaneval_row_without_tests_is_refused(tmp_path):
    path = tmp_path / "humaneval" / "HumanEval.jsonl.gz"
    path.parent.mkdir()
    row = {"task_id": "X/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n", "entry_point": "f"}
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"HumanEval\.jsonl\.gz:1: missing field 'test'"):
        load_benchmark("humaneval", tmp_path, allow_hub=False)


def test_empty_answers_and_empty_files_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [{"question": "q", "answer": "  "}])
    with pytest.raises(DataError, match=r"e\.jsonl:1: empty answer"):
        load_benchmark(f"jsonl:{path}")
    write_jsonl(path, [""])
    with pytest.raises(DataError, match="no rows"):
        load_benchmark(f"jsonl:{path}")
    with pytest.raises(DataError, match="no such file"):
        load_benchmark(f"jsonl:{tmp_path / 'absent.jsonl'}")
