"""Misuse of settings, data and commands (review issue 14, findings 7-8): what is wrong is
refused at start with one `thinkrl...:` line that says what to change, exit code 2 and no
traceback; never accepted and silently turned into a useless run."""

import json
import re

import pytest
import torch

from thinkrl.cli import main
from thinkrl.config import ConfigError, load_config
from thinkrl.data import DataError, load_jsonl


def refused(capsys, code: int, expect: str = "", one_line: bool = False) -> str:
    """The command returned 2 and said why on stderr (`thinkrl...: ...`), with no traceback."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("thinkrl") and "Traceback" not in err, err
    assert expect in err, err
    assert not one_line or len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize("override, message", [
    ("optim.lr=.inf", "optim.lr must be a finite number"),
    ("optim.lr=.nan", "optim.lr must be a finite number"),
    ("rollout.temperature=.inf", "rollout.temperature must be a finite number"),
    ("objective.eps_low=.inf", "objective.eps_low must be a finite number"),
    ("optim.betas=[0.9, 1.5]", "optim.betas"),
    ("optim.weight_decay=-0.1", "optim.weight_decay must be >= 0"),
    ("run.threads=-1", "run.threads=-1"),
])
def test_non_finite_or_impossible_numbers_are_refused_at_start(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("text, message", [
    ("model:\n\tpath: embedded\n", "c.yaml:2:1: not valid YAML.*never tabs"),
    ("model: {path: embedded\n", "c.yaml:2:1: not valid YAML"),
    (b"model:\n  path: \xff\xfe\n", "c.yaml:2: not UTF-8"),
])
def test_an_unreadable_yaml_file_is_one_line_naming_the_place(tmp_path, capsys, text, message):
    p = tmp_path / "c.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=message):
        load_config(p)
    refused(capsys, main(["train", "--config", str(p), "--out", str(tmp_path / "run")]), "c.yaml", one_line=True)


def test_a_section_set_to_a_scalar_then_given_a_key_is_refused(tmp_path, capsys):
    refused(capsys, main(["zero", "--out", str(tmp_path / "run"), "train=1", "train.steps=3"]),
            "earlier override set 'train' itself to 1", one_line=True)


@pytest.mark.parametrize("override, message", [
    ("model.path=/no/such/model/dir", "model.path '/no/such/model/dir' does not exist"),
    ("run.threads=-1", "run.threads=-1"),
    ("model.device=cuda", "no CUDA GPU"),
])
def test_settings_that_cannot_run_here_are_one_line_before_loading_anything(tmp_path, capsys, override, message):
    if override == "model.device=cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    refused(capsys, main(["zero", "--out", str(tmp_path / "run"), override]), message)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_model_path_that_is_not_on_the_hub_either_is_a_message(tmp_path):
    from thinkrl.policy import ModelNotFound, load_tokenizer

    with pytest.raises(ModelNotFound, match="cannot load the tokenizer '.*missing'.*hub id"):
        load_tokenizer(str(tmp_path / "missing"))


def test_overrides_are_accepted_among_the_flags(tmp_path, capsys):
    # parsed, so the override after the flag reaches the config (and is found wrong there)
    refused(capsys, main(["zero", "optim.lr=1e-5", "--no-progress", "--out", str(tmp_path / "run"),
                          "train.steps=abc"]), "train.steps must be int")
    (tmp_path / "c.yaml").write_text("{}\n")
    refused(capsys, main(["train", "--config", str(tmp_path / "c.yaml"), "optim.lr=1e-5", "--no-progress",
                          "train.steps=abc"]), "train.steps must be int")
    for command in ("rm", "coldstart", "reject", "sft", "distill"):
        code = main([command, "nosuch.key=1", "--out", str(tmp_path / command), "other.key=2"])
        refused(capsys, code, "unknown config key 'nosuch")
    refused(capsys, main(["pipeline", "--plan", "zero.train.steps=5", "--out", str(tmp_path / "p"),
                          "zero.train.steps=abc"]), "train.steps must be int")


# ---------------------------------------------------------------------------- the pipeline


def test_the_pipeline_validates_every_stage_before_running_or_planning(tmp_path, capsys):
    refused(capsys, main(["pipeline", "--plan", "zero.train.steps=abc"]), "stage 'zero' (grpo)")
    err = refused(capsys, main(["pipeline", "--out", str(tmp_path / "p"), "student_rl.train.stepz=3",
                                         "distill.sft.optim.lr=.inf"]), "nothing was run")
    assert "stage 'student_rl' (grpo): unknown config key 'train.stepz'" in err and "stage 'distill'" in err
    assert not (tmp_path / "p" / "stages").exists()


# ---------------------------------------------------------------------------- data


def write(path, lines: list[bytes]):
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


@pytest.mark.parametrize("bad, problem", [
    (b'{"question": null, "answer": "2"}', "field 'question' is null"),
    (b'{"question": "1+1?", "answer": null}', "field 'answer' is null"),
    ('{"question": "caf\xe9?", "answer": "2"}'.encode("latin-1"), "not UTF-8 text (byte 0xe9"),
])
def test_a_null_field_or_non_utf8_line_is_a_bad_row_never_a_string(tmp_path, caplog, bad, problem):
    good = b'{"question": "2+2?", "answer": "4"}'
    path = write(tmp_path / "d.jsonl", [good, bad, good])
    with pytest.raises(DataError, match=re.escape(f"d.jsonl:2: {problem}")):
        load_jsonl(path)
    rows = load_jsonl(path, on_bad_row="skip")
    assert [r["question"] for r in rows] == ["2+2?", "2+2?"]
    assert "skipped 1 bad line" in caplog.text


def test_score_on_non_utf8_data_is_one_line_and_leaves_no_tmp(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", [b'{"completion": "ok"}', b'{"completion": "\xff"}'])
    out = tmp_path / "scores.jsonl"
    refused(capsys, main(["score", "--rewards", "format", "--data", str(data), "--out", str(out)]),
            "d.jsonl:2: not UTF-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


@pytest.mark.parametrize("how", ["same", "symlink", "other_spelling"])
def test_score_refuses_to_write_over_its_input(tmp_path, capsys, monkeypatch, how):
    data = write(tmp_path / "d.jsonl", [b'{"completion": "<think> a </think> <answer> 1 </answer>"}'])
    before = data.read_bytes()
    out = {"same": data, "symlink": tmp_path / "link.jsonl", "other_spelling": "./sub/../d.jsonl"}[how]
    if how == "symlink":
        out.symlink_to(data)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    refused(capsys, main(["score", "--rewards", "format", "--data", str(data), "--out", str(out)]),
            "is the input file")
    assert data.read_bytes() == before


def test_eval_refuses_a_completion_budget_below_one(tmp_path, capsys):
    refused(capsys, main(["eval", "--model", "embedded", "--benchmark", "embedded", "--samples", "1",
                          "--limit", "2", "--max-new-tokens", "0", "--out", str(tmp_path / "e")]), "max_new_tokens")
    assert not (tmp_path / "e" / "results.json").exists()


def test_score_output_rows_follow_the_input_after_these_checks(tmp_path):
    data = write(tmp_path / "d.jsonl", [b'{"completion": "<think> a </think> <answer> 1 </answer>"}'])
    assert main(["score", "--rewards", "format", "--data", str(data), "--out", str(tmp_path / "o.jsonl")]) == 0
    assert json.loads((tmp_path / "o.jsonl").read_text())["rewards"] == {"format": 1.0}
