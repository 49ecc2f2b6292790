"""Datasets from every source (thinkrl.data_sources): parquet, JSON (array and lines),
save_to_disk (Dataset and DatasetDict), hf:ID (a local folder of data files standing in for the
hub, which is out of reach here), each read into the same rows as the JSONL file holding them,
with the same field map and bad-row handling; and GRPO and SFT training from them."""

import datetime
import json
import logging
import sys

import pytest

from thinkrl.data import DataError, load_dataset
from thinkrl.data_sources import plain

datasets = pytest.importorskip("datasets")


def rows_of(n: int, start: int = 0) -> list[dict]:
    """Rows with a mapped question/answer (problem/solution), an int level and a list column."""
    return [{"problem": f"What is {a}+{a + 1}?", "solution": 2 * a + 1, "level": 1 + a % 3, "tags": [a, a + 1]}
            for a in range(start, start + n)]


TRAIN, TEST = rows_of(6), rows_of(3, start=100)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def hub_offline(tmp_path, monkeypatch):
    """No network: offline mode (the hub fails at once instead of waiting on a connection), and
    the datasets cache in tmp_path."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.fixture()
def sources(tmp_path, hub_offline):
    """The same train rows (and for split-aware sources, the test rows) in every format."""
    out = {"jsonl": write_jsonl(tmp_path / "train.jsonl", TRAIN)}
    ds = datasets.Dataset.from_list(TRAIN)
    ds.to_parquet(str(tmp_path / "train.parquet"))
    out["parquet"] = tmp_path / "train.parquet"
    ds.to_json(str(tmp_path / "lines.json"))  # JSON lines
    out["json_lines"] = tmp_path / "lines.json"
    (tmp_path / "array.json").write_text(json.dumps(TRAIN, indent=1))
    out["json_array"] = tmp_path / "array.json"
    ds.save_to_disk(str(tmp_path / "saved"))
    out["saved"] = tmp_path / "saved"
    datasets.DatasetDict(train=ds, test=datasets.Dataset.from_list(TEST)).save_to_disk(str(tmp_path / "dict"))
    out["dict"] = tmp_path / "dict"
    (tmp_path / "hub").mkdir()
    write_jsonl(tmp_path / "hub" / "train.jsonl", TRAIN)
    write_jsonl(tmp_path / "hub" / "test.jsonl", TEST)
    out["hf"] = f"hf:{tmp_path / 'hub'}"
    return out


def test_every_source_gives_the_rows_of_the_jsonl_file_with_the_field_map(sources):
    expected = load_dataset(str(sources["jsonl"]), "train", "problem", "solution")
    assert [r["question"] for r in expected] == [r["problem"] for r in TRAIN]
    for name, spec in sources.items():
        rows = load_dataset(str(spec), "train", question_field="problem", answer_field="solution")
        assert rows == expected, name
        for r in rows:  # plain Python, as JSON gives them: rewards and json.dumps take them as they are
            assert type(r["level"]) is int and type(r["tags"]) is list and all(type(t) is int for t in r["tags"])
            assert type(r["answer"]) is str
            json.dumps(r)


def test_the_split_is_the_callers_unless_the_spec_names_one(sources, tmp_path):
    expected_test = load_dataset(str(write_jsonl(tmp_path / "test.jsonl", TEST)), "test", "problem", "solution")
    for spec in (sources["dict"], sources["hf"]):  # GRPO's data.eval asks for "test"
        assert load_dataset(str(spec), "test", "problem", "solution") == expected_test
    assert load_dataset(sources["hf"] + "?split=test", "train", "problem", "solution") == expected_test
    assert load_dataset(str(sources["dict"] / "test"), "train", "problem", "solution") == expected_test
    with pytest.raises(DataError, match=r"without a 'validation' split \(its splits: train, test\); give the "
                                        r"directory of the split to read, e.g. .*dict/train"):
        load_dataset(str(sources["dict"]), "validation")
    with pytest.raises(DataError, match=r"Unknown split \"validation\".*choose with \?config=NAME&split=NAME"):
        load_dataset(sources["hf"] + "?split=validation", "train")


def test_bad_rows_name_source_and_row_or_are_skipped_and_counted(tmp_path, hub_offline, caplog):
    rows = [dict(r) for r in TRAIN]
    rows[2]["solution"] = None  # row 3
    rows[4]["solution"] = None  # row 5
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "bad.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad_saved"))
    for spec in (tmp_path / "bad.parquet", tmp_path / "bad_saved"):
        with pytest.raises(DataError) as e:
            load_dataset(str(spec), "train", "problem", "solution")
        assert str(e.value).startswith(f"{spec}: row 3: field 'solution' is null"), e.value
        assert "or set data.on_bad_row=skip to skip such rows" in str(e.value)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="thinkrl"):
            kept = load_dataset(str(spec), "train", "problem", "solution", on_bad_row="skip")
        assert [r["question"] for r in kept] == [r["problem"] for i, r in enumerate(TRAIN) if i not in (2, 4)]
        assert f"{spec}: skipped 2 bad row(s)" in caplog.text and "row 3:" in caplog.text and "row 5:" in caplog.text
    # a JSON array: a row may lack a key, or not be an object at all
    (tmp_path / "bad.json").write_text(json.dumps([TRAIN[0], 5, TRAIN[1], {"problem": "x"}]))
    with pytest.raises(DataError, match=r"bad.json: row 2: each row must be a JSON object"):
        load_dataset(str(tmp_path / "bad.json"), "train", "problem", "solution")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="thinkrl"):
        kept = load_dataset(str(tmp_path / "bad.json"), "train", "problem", "solution", on_bad_row="skip")
    assert len(kept) == 2 and "skipped 2 bad row(s)" in caplog.text
    assert "row 4: missing field 'solution' (fields present: ['problem'])" in caplog.text
    (tmp_path / "nothing.json").write_text("[5]")
    with pytest.raises(DataError, match=r"nothing.json: the dataset is empty after skipping 1 bad row\(s\)"):
        load_dataset(str(tmp_path / "nothing.json"), "train", on_bad_row="skip")
    (tmp_path / "broken.json").write_text('[{"problem": "x",\n')
    with pytest.raises(DataError, match=r"broken.json: not valid JSON \(.* at line 2 column 1\)"):
        load_dataset(str(tmp_path / "broken.json"), "train")
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="empty.parquet: not a readable parquet file"):
        load_dataset(str(tmp_path / "empty.parquet"), "train")
    with pytest.raises(DataError, match="missing.parquet: no such file"):
        load_dataset(str(tmp_path / "missing.parquet"), "train")
    (tmp_path / "not_saved").mkdir()
    with pytest.raises(DataError, match=r"not one written by datasets' save_to_disk .* give hf:.*not_saved"):
        load_dataset(str(tmp_path / "not_saved"), "train")
    with pytest.raises(DataError, match=r"x.csv: CSV files are not read directly"):
        load_dataset(str(tmp_path / "x.csv"), "train")


def test_plain_turns_numpy_and_other_objects_into_json_values():
    np = pytest.importorskip("numpy")
    value = {"i": np.int64(3), "a": np.array([[1, 2], [3, 4]]), "t": (np.float32(0.5), "x"), "n": None,
             "b": np.bool_(True), "d": datetime.date(2024, 1, 2), 7: np.str_("s"), "f": 1.5, "l": [True, 2]}
    out = plain(value)
    assert out == {"i": 3, "a": [[1, 2], [3, 4]], "t": [0.5, "x"], "n": None, "b": True, "d": "2024-01-02",
                   "7": "s", "f": 1.5, "l": [True, 2]}
    assert type(out["i"]) is int and type(out["b"]) is bool and type(out["t"][0]) is float and type(out["7"]) is str
    assert json.loads(json.dumps(out)) == out


def test_hub_specs_refuse_unknown_options_and_name_an_unreachable_hub(hub_offline, tmp_path):
    with pytest.raises(DataError, match=r"unknown option 'revision'; hf: takes config and split only"):
        load_dataset("hf:openai/gsm8k?config=main&revision=x", "train")
    with pytest.raises(DataError, match=r"name a dataset after hf:"):
        load_dataset("hf:?split=train", "train")
    with pytest.raises(DataError, match=r"give split once, with a value"):
        load_dataset("hf:openai/gsm8k?split=", "train")
    with pytest.raises(DataError, match=r"no such directory"):
        load_dataset(f"hf:{tmp_path / 'absent'}", "train")
    with pytest.raises(DataError) as e:
        load_dataset("hf:openai/gsm8k?config=main", "train")
    msg = str(e.value)
    assert msg.startswith("hf:openai/gsm8k?config=main (split train): could not load 'openai/gsm8k'"), msg
    assert "hub may be unreachable" in msg and "give a local copy" in msg and "save_to_disk" in msg


def test_without_the_datasets_package_jsonl_works_and_the_rest_say_what_to_install(sources, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(ImportError):
        import datasets as _  # noqa: F401
    assert len(load_dataset(str(sources["jsonl"]), "train", "problem", "solution")) == len(TRAIN)
    for name in ("hf", "saved", "dict"):
        with pytest.raises(DataError, match=r"needs the `datasets` package, which is not installed: "
                                            r"pip install 'thinkrl\[datasets\]' \(or pip install datasets\)"):
            load_dataset(str(sources[name]), "train", "problem", "solution")
    assert len(load_dataset(str(sources["parquet"]), "train", "problem", "solution")) == len(TRAIN)  # pyarrow
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"reading parquet needs pyarrow, which is not installed: pip install "
                                        r"'thinkrl\[datasets\]' \(or pip install pyarrow\)"):
        load_dataset(str(sources["parquet"]), "train", "problem", "solution")


# ---------------------------------------------------------------------------- the commands that read data


def sft_rows(n: int, seed: int) -> list[dict]:
    """{prompt, response} rows of the embedded task, and every third one a conversation."""
    import random

    from thinkrl.task.arithmetic import completion, make_problem

    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = make_problem(rng, 1 + i % 4)
        reply = completion(p["a"], p["b"], "correct")
        out.append({"messages": [{"role": "user", "content": p["question"]}, {"role": "assistant", "content": reply}]}
                   if i % 3 == 2 else {"prompt": p["question"], "response": reply})
    return out


def test_sft_and_reward_model_read_every_source(tmp_path, hub_offline):
    from thinkrl.train.reward_model_data import load_pairs
    from thinkrl.train.sft_config import SFTDataConfig
    from thinkrl.train.sft_data import read_rows

    rows, held = sft_rows(9, seed=1), sft_rows(4, seed=2)
    d = SFTDataConfig(train=str(write_jsonl(tmp_path / "sft.jsonl", rows)),
                      eval=str(write_jsonl(tmp_path / "sft_eval.jsonl", held)))
    expected, expected_held = read_rows(d.train, d)[0], read_rows(d.eval, d)[0]
    assert [("messages" in r) for r in expected] == [False, False, True] * 3
    table = datasets.Dataset.from_list([{k: r.get(k) for k in ("prompt", "response", "messages")} for r in rows])
    table.to_parquet(str(tmp_path / "sft.parquet"))  # both formats in one table: nulls where a row has no such field
    assert read_rows(str(tmp_path / "sft.parquet"), d)[0] == expected
    held_table = datasets.Dataset.from_list([{k: r.get(k) for k in ("prompt", "response", "messages")} for r in held])
    datasets.DatasetDict(train=table, test=held_table).save_to_disk(str(tmp_path / "sft_dict"))
    d2 = SFTDataConfig(train=str(tmp_path / "sft_dict"), eval=str(tmp_path / "sft_dict"))
    assert read_rows(d2.train, d2)[0] == expected  # the same directory for both reads the train split
    d3 = SFTDataConfig(train=str(tmp_path / "sft.parquet"), eval=str(tmp_path / "sft_dict"))
    assert read_rows(d3.eval, d3)[0] == expected_held  # data.eval reads the test split
    pairs = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "score": i} for i in range(5)]
    expected_pairs = load_pairs(write_jsonl(tmp_path / "pairs.jsonl", pairs))
    datasets.Dataset.from_list(pairs).to_parquet(str(tmp_path / "pairs.parquet"))
    assert load_pairs(str(tmp_path / "pairs.parquet")) == expected_pairs
    assert load_pairs(str(tmp_path / "pairs.jsonl").replace(".jsonl", ".parquet"), split="test") == expected_pairs


def drop_timing(rows):
    return [{k: v for k, v in r.items() if not k.startswith("timing/") and k not in ("time", "step_seconds", "tokens_per_s")}
            for r in rows]


@pytest.mark.usefixtures("one_thread")
def test_sft_trains_from_parquet_and_a_saved_datasetdict_as_from_jsonl(tmp_path, hub_offline):
    from thinkrl.metrics import read_metrics
    from thinkrl.train.sft import load_sft_config, run_sft

    rows = [r for r in sft_rows(9, seed=3) if "prompt" in r]  # the embedded tokenizer has no chat template
    held = [r for r in sft_rows(4, seed=4) if "prompt" in r]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "t.parquet"))
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows),
                         test=datasets.Dataset.from_list(held)).save_to_disk(str(tmp_path / "dict"))
    runs = {}
    for name, train, ev in (("jsonl", write_jsonl(tmp_path / "t.jsonl", rows), write_jsonl(tmp_path / "e.jsonl", held)),
                            ("tables", tmp_path / "t.parquet", tmp_path / "dict")):
        overrides = {"data.train": train, "data.eval": ev, "train.epochs": 1, "train.batch_size": 2,
                     "train.micro_batch_size": 2, "optim.lr": 1e-3, "run.progress": False, "run.seed": 5,
                     "run.threads": 1}
        summary = run_sft(load_sft_config(None, [f"{k}={v}" for k, v in overrides.items()]), tmp_path / name)
        runs[name] = summary, drop_timing(read_metrics(tmp_path / name))
    (s1, m1), (s2, m2) = runs["jsonl"], runs["tables"]
    assert s1["n_samples"] == s2["n_samples"] == len(rows) and s1["n_eval"] == s2["n_eval"] == len(held)
    assert s2["steps"] == 3 and m1 == m2
    assert s2["eval_loss"] == s1["eval_loss"]


@pytest.mark.usefixtures("one_thread")
def test_grpo_trains_from_parquet_with_eval_from_a_saved_datasetdict_as_from_jsonl(tmp_path, hub_offline, qwen2_dir):
    from thinkrl.config import load_config
    from thinkrl.metrics import read_metrics
    from thinkrl.train.grpo import GRPOTrainer

    train = [{"q": f"What is {a}+{b}?", "a": a + b, "level": 1 + (a > 5)} for a in range(10) for b in range(2)]
    test = train[:6]
    datasets.Dataset.from_list(train).to_parquet(str(tmp_path / "train.parquet"))
    datasets.DatasetDict(train=datasets.Dataset.from_list(train),
                         test=datasets.Dataset.from_list(test)).save_to_disk(str(tmp_path / "dict"))
    metrics = {}
    for name, tr, ev in (("jsonl", write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "test.jsonl", test)),
                         ("tables", tmp_path / "train.parquet", tmp_path / "dict")):
        overrides = {"model.path": qwen2_dir, "data.train": tr, "data.eval": ev, "data.eval_size": 6,
                     "data.question_field": "q", "data.answer_field": "a", "train.prompts_per_step": 2,
                     "rollout.group_size": 2, "rollout.max_new_tokens": 4, "eval.max_new_tokens": 4, "train.steps": 2,
                     "train.save_every": 0, "eval.every": 0, "run.progress": False, "run.seed": 3}
        trainer = GRPOTrainer(load_config(None, [f"{k}={v}" for k, v in overrides.items()]), tmp_path / name)
        assert len(trainer.train_rows) == len(train)
        assert trainer.run()["steps"] == 2
        metrics[name] = drop_timing(read_metrics(tmp_path / name))
    assert [r["step"] for r in metrics["tables"]] == [0, 1, 2]
    assert metrics["tables"] == metrics["jsonl"]
