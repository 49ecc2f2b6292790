"""Fault injection: a run killed anywhere resumes into the same run, a full disk never costs
the previous checkpoint, NaN steps are skipped and then stop the run with their cause, and
bad data says what is wrong and where."""

import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_trainer import ROOT, drop_timing, random_model_overrides, small_dataset
from thinkrl import checkpoint
from thinkrl.cli import main
from thinkrl.config import load_config
from thinkrl.data import DataError, load_jsonl
from thinkrl.metrics import read_metrics
from thinkrl.train.grpo import GRPOTrainer

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}

# Runs `thinkrl train` in a child that SIGKILLs itself at the chosen point: the N-th call of
# the named function. Nothing of the trainer is replaced; the kill lands inside its real work.
KILLER = """
import os, signal, sys
point, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
calls = [0]

def die_at_nth(obj, name, before=True, half_line=False):
    real = getattr(obj, name)
    def wrapper(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            if half_line:  # a metrics line cut in the middle, as a kill during the write leaves it
                self, row = a
                with open(self.path, "a") as f:
                    f.write(__import__("json").dumps(row)[:25])
            if before or half_line:
                os.kill(os.getpid(), signal.SIGKILL)
            out = real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    setattr(obj, name, wrapper)

import thinkrl.train.grpo as tr, thinkrl.checkpoint as ck, thinkrl.metrics as mt
if point == "mid_step":            # inside the update of a step
    die_at_nth(tr, "grpo_loss")
elif point == "checkpoint_write":  # weights written, trainer state and manifest not yet
    die_at_nth(ck.torch, "save")
elif point == "after_metrics":     # the step's line is written, its checkpoint is not
    die_at_nth(mt.MetricsWriter, "write", before=False)
elif point == "metrics_half_line":
    die_at_nth(mt.MetricsWriter, "write", half_line=True)
from thinkrl.cli import main
sys.exit(main(["train"] + args))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, qwen2_dir):
    tmp = tmp_path_factory.mktemp("faults")
    overrides = random_model_overrides(qwen2_dir, small_dataset(tmp), **{
        "train.steps": 6, "train.save_every": 2, "eval.every": 3, "objective.beta": 0.04})
    GRPOTrainer(load_config(None, overrides), tmp / "whole").run()
    (tmp / "none.yaml").write_text("{}\n")
    return tmp, overrides, drop_timing(read_metrics(tmp / "whole"))


def assert_same_run(a, b):
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(7))
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys(), ra["step"]
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], abs=1e-6), (ra["step"], k)


@pytest.mark.parametrize("point, n, resumes_from", [
    ("mid_step", 5, 4),            # the 5th loss call is in step 5 (μ = 1, one micro-batch, β > 0 keeps all)
    ("checkpoint_write", 2, 2),    # dies writing step 4's checkpoint: step 2's is the newest complete one
    ("after_metrics", 5, 2),       # step 4's line is on disk (lines: step 0..4), its checkpoint never came
    ("metrics_half_line", 4, 2),   # dies half-way through step 3's line
])
def test_sigkill_anywhere_then_resume_gives_the_same_metrics(setup, point, n, resumes_from):
    tmp, overrides, whole = setup
    out = tmp / f"killed_{point}"
    res = subprocess.run([sys.executable, "-c", KILLER, point, str(n), "--config", str(tmp / "none.yaml"),
                          "--out", str(out), *overrides], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stdout[-2000:] + res.stderr[-2000:]
    assert not (out / "summary.json").exists()
    resumed = GRPOTrainer(load_config(None, overrides), out, resume=True)
    assert resumed.step == resumes_from
    resumed.run()
    assert_same_run(whole, drop_timing(read_metrics(out)))
    assert not list((out / "checkpoints").glob(".tmp_*"))  # nothing half-written survives the next save
    assert all(checkpoint.verify(c) for c in checkpoint.list_checkpoints(out / "checkpoints"))


def disk_full_at(monkeypatch, nth: int):
    real, calls = checkpoint.torch.save, [0]

    def save(*a, **k):
        calls[0] += 1
        if calls[0] == nth:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", save)


def test_disk_full_stops_cleanly_and_keeps_the_previous_checkpoint(setup, monkeypatch, capsys):
    tmp, overrides, _ = setup
    out = tmp / "full"
    disk_full_at(monkeypatch, 2)  # the checkpoint of step 4
    rc = main(["train", "--config", str(tmp / "none.yaml"), "--out", str(out), *overrides])
    assert rc == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "step_000002" in err and "--resume" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["interrupted"] and "No space left" in summary["error"]
    ckpts = checkpoint.list_checkpoints(out / "checkpoints")
    assert [c.name for c in ckpts] == ["step_000002"] and checkpoint.verify(ckpts[0])
    assert not list((out / "checkpoints").glob(".tmp_*"))
    # space is back: the run continues from step 2 and ends as it would have
    monkeypatch.undo()
    assert main(["train", "--config", str(tmp / "none.yaml"), "--out", str(out), "--resume", *overrides]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 6


def test_disk_full_can_be_carried_past_when_configured(setup, monkeypatch, caplog):
    tmp, overrides, whole = setup
    out = tmp / "full_continue"
    disk_full_at(monkeypatch, 1)
    with caplog.at_level(logging.WARNING, logger="thinkrl"):
        summary = GRPOTrainer(load_config(None, overrides + ["train.on_checkpoint_error=continue"]), out).run()
    assert summary["steps"] == 6 and summary["error"] is None
    assert any("continuing without it" in r.getMessage() for r in caplog.records)
    assert [c.name for c in checkpoint.list_checkpoints(out / "checkpoints")] == ["step_000004", "step_000006"]
    assert_same_run(whole, drop_timing(read_metrics(out)))


def nan_reward(completions, **kwargs):
    return [float("nan")] * len(completions)


def test_a_nan_reward_skips_steps_then_stops_naming_the_reward(setup):
    tmp, overrides, _ = setup
    name = "tests.test_faults:nan_reward"
    cfg = load_config(None, overrides + [f"rewards.weights={{accuracy: 1, '{name}': 1}}", "train.max_bad_steps=2"])
    trainer = GRPOTrainer(cfg, tmp / "nan_reward")
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    summary = trainer.run()
    assert summary["steps"] == 2 and name in summary["error"] and "NaN/inf" in summary["error"]
    assert "fix or remove that reward" in summary["error"]
    rows = read_metrics(tmp / "nan_reward")
    assert [r["skipped"] for r in rows[1:]] == [1, 1]
    for k, v in trainer.policy.state_dict().items():  # never updated from a broken signal
        assert torch.equal(v, before[k]), k


def test_a_nan_loss_skips_steps_then_stops_naming_the_learning_rate(setup):
    tmp, overrides, _ = setup
    cfg = load_config(None, overrides + ["optim.lr=1e30", "optim.max_grad_norm=0", "train.max_bad_steps=2",
                                         "optim.warmup_steps=0", "train.steps=20"])
    summary = GRPOTrainer(cfg, tmp / "nan_loss").run()
    assert summary["error"] and "optim.lr" in summary["error"] and summary["steps"] < 20
    rows = read_metrics(tmp / "nan_loss")
    assert rows[-1]["skipped"] == 1 and rows[-2]["skipped"] == 1 and rows[1]["skipped"] == 0


# ---------------------------------------------------------------- bad data


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(l + "\n" for l in lines))
    return path


def test_bad_data_names_the_file_and_line_or_is_skipped_and_counted(tmp_path, caplog):
    good = json.dumps({"question": "1+1", "answer": "2"})
    f = write(tmp_path / "d.jsonl", [good, "", "{broken", json.dumps({"question": "no answer"}), "[1, 2]", good])
    with pytest.raises(DataError, match=r"d\.jsonl:3: not valid JSON.*data\.on_bad_row=skip"):
        load_jsonl(f)
    with caplog.at_level(logging.WARNING, logger="thinkrl"):
        rows = load_jsonl(f, on_bad_row="skip")
    assert len(rows) == 2
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 3 bad line(s)" in msg and "line 3" in msg and "line 4" in msg and "line 5" in msg
    with pytest.raises(DataError, match=r"d\.jsonl:1: missing field 'problem' \(fields present: \['answer', 'question'\]\)"):
        load_jsonl(f, question_field="problem")
    with pytest.raises(DataError, match="the dataset is empty"):
        load_jsonl(write(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(DataError, match="empty after skipping 1 bad line"):
        load_jsonl(write(tmp_path / "allbad.jsonl", ["{"]), on_bad_row="skip")
    with pytest.raises(DataError, match="no such file"):
        load_jsonl(tmp_path / "missing.jsonl")


def test_bad_data_from_the_command_line(tmp_path, qwen2_dir, capsys, caplog):
    data = small_dataset(tmp_path)
    (tmp_path / "none.yaml").write_text("{}\n")
    base = ["train", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "run")]
    bad = write(tmp_path / "bad.jsonl", [json.dumps({"q": "1+1", "a": "2"}), "not json"])
    args = random_model_overrides(qwen2_dir, bad, **{"train.steps": 1})
    assert main(base + args) == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err
    args = random_model_overrides(qwen2_dir, data, **{"data.question_field": "question"})
    assert main(base + args) == 2
    assert "missing field 'question'" in capsys.readouterr().err
    args = random_model_overrides(qwen2_dir, data, **{"data.max_prompt_tokens": 3})
    assert main(base + args) == 2
    assert "every question is longer than data.max_prompt_tokens=3" in capsys.readouterr().err
    assert main(base + ["data.on_bad_row=maybe"]) == 2
    assert "data.on_bad_row" in capsys.readouterr().err


# ---------------------------------------------------------------- the main job, killed at a random moment


def test_zero_killed_at_a_random_moment_resumes_to_the_same_summary(tmp_path):
    args = ["--steps", "6", "--no-progress", "train.save_every=2", "eval.every=3", "data.eval_size=24"]
    cli = [sys.executable, "-m", "thinkrl.cli", "zero"]
    whole = subprocess.run(cli + ["--out", str(tmp_path / "whole"), *args], env=ENV, capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(cli + ["--out", str(out), *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoints" / "step_000002").exists():
        time.sleep(0.05)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 2.0))  # somewhere after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = subprocess.run(cli + ["--out", str(out), "--resume", *args], env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    a = json.loads((tmp_path / "whole" / "summary.json").read_text())
    b = json.loads((out / "summary.json").read_text())
    for key in ("steps", "accuracy_start", "accuracy_end", "accuracy_by_level", "completion_len_end",
                "reflection_rate_end"):
        assert a[key] == b[key], key
