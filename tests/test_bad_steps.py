"""One NaN/inf policy for every training loop (GRPO's is in test_faults.py): SFT and reward-model
training skip a step whose loss or gradient is not finite (no update, the schedule advancing as
for a taken step, `skipped` in the metrics), carry on after a single bad step, and after
train.max_bad_steps in a row stop with the cause and the likely fix, never saving NaN weights."""

import json
import math

import pytest
import torch

import thinkrl.train.reward_model as rm_module
import thinkrl.train.sft as sft_module
from thinkrl import checkpoint as ckpt
from thinkrl.cli import main as cli_main
from thinkrl.config import ConfigError
from thinkrl.train.loop import BadSteps
from thinkrl.metrics import read_metrics
from thinkrl.policy import load_model
from thinkrl.train.reward_model import load_rm_config, train_reward_model
from thinkrl.train.sft import SFTTrainer, load_sft_config, run_sft

from .test_sft import task_rows, tiny_overrides, write_jsonl


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, given back


def nan_at(steps: set, step_of):
    """A loss function wrapper: the loss is NaN (and so is its gradient) at the given steps."""
    def wrap(fn):
        def nll(*args, **kwargs):
            out = fn(*args, **kwargs)
            return out * float("nan") if step_of() in steps else out
        return nll
    return wrap


# ---------------------------------------------------------------------------- the shared counter


def test_bad_steps_counts_consecutive_skips_and_names_the_fix():
    bad = BadSteps(2, lr="train.lr", clip="train.max_grad_norm")
    bad.record("the loss is nan")
    bad.record("")  # a good step resets the count
    assert bad.count == 0 and not bad.exhausted
    bad.record("the loss is nan")
    bad.record("the gradient norm is inf")
    assert bad.exhausted
    msg = bad.message(None)
    assert "2 consecutive steps were skipped (train.max_bad_steps=2)" in msg
    assert "the gradient norm is inf" in msg and "train.lr" in msg and "nothing was saved" in msg


def test_max_bad_steps_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="train.max_bad_steps must be >= 1"):
        load_sft_config(None, [f"data.train={tmp_path / 'x.jsonl'}", "train.max_bad_steps=0"])
    with pytest.raises(ConfigError, match="train.max_bad_steps must be >= 1"):
        load_rm_config(None, ["train.max_bad_steps=0"])
    assert load_sft_config(None, [f"data.train={tmp_path / 'x.jsonl'}"]).train.max_bad_steps == 5
    assert load_rm_config(None, []).train.max_bad_steps == 5


# ---------------------------------------------------------------------------- SFT


def test_sft_skipped_step_leaves_the_model_and_advances_the_schedule(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", task_rows(15))
    trainer = SFTTrainer(load_sft_config(None, tiny_overrides(data)), tmp_path / "run")
    monkeypatch.setattr(sft_module, "batch_nll", nan_at({0}, lambda: trainer.step)(sft_module.batch_nll))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    m = trainer.train_step()
    assert m["skipped"] == 1 and math.isnan(m["step_loss"])
    assert trainer.scheduler.last_epoch == 1 and trainer.bad.count == 1
    assert all(p.grad is None for p in trainer.model.parameters())
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_sft_one_nan_step_is_skipped_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    data = write_jsonl(tmp_path / "d.jsonl", task_rows(15))  # 12 train rows: 6 steps
    overrides = tiny_overrides(data, **{"train.max_bad_steps": 2})
    clean = run_sft(load_sft_config(None, overrides), tmp_path / "clean")
    trainer = SFTTrainer(load_sft_config(None, overrides), tmp_path / "nan")
    monkeypatch.setattr(sft_module, "batch_nll", nan_at({2}, lambda: trainer.step)(sft_module.batch_nll))
    s = trainer.run()
    assert s["error"] is None and not s["interrupted"] and s["final_dir"] and s["steps"] == 6
    rows = [r for r in read_metrics(tmp_path / "nan") if r["step"] > 0]
    assert [r["skipped"] for r in rows] == [0, 0, 1, 0, 0, 0]
    assert "step 3 skipped: the loss is nan" in caplog.text
    # the schedule counts the skipped step as the clean run counts its step 3
    assert [r["lr"] for r in rows] == pytest.approx([r["lr"] for r in read_metrics(tmp_path / "clean")[1:]])
    assert rows[2]["loss"] is None and all(math.isfinite(r["loss"]) for r in rows if not r["skipped"])
    assert clean["error"] is None


def test_sft_huge_lr_skips_then_stops_naming_the_lr_and_keeps_finite_checkpoints(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", task_rows(15))
    out = tmp_path / "run"
    args = tiny_overrides(data, **{"optim.lr": 1e30, "optim.max_grad_norm": 0, "optim.warmup_steps": 0,
                                   "optim.schedule": "constant", "train.max_bad_steps": 2, "train.save_every": 1,
                                   "train.epochs": 4})
    code = cli_main(["sft", "--out", str(out)] + args)
    assert code == 1
    err = capsys.readouterr().err
    assert "2 consecutive steps were skipped (train.max_bad_steps=2)" in err and "optim.lr" in err
    s = json.loads((out / "summary.json").read_text())
    assert s["interrupted"] and "optim.lr" in s["error"] and s["final_dir"] is None
    assert s["steps"] < s["total_steps"]
    rows = [r for r in read_metrics(out) if r["step"] > 0]
    assert [r["skipped"] for r in rows[-2:]] == [1, 1] and rows[-1]["step"] == s["steps"]
    assert not (out / "final").exists()
    saved = ckpt.list_checkpoints(out / "checkpoints")
    assert saved and all(ckpt.step_of(c) < s["steps"] for c in saved)  # none written at the stop
    for c in saved:  # a skipped step saves the weights of the last good one: finite
        assert not ckpt.nonfinite_parameters(load_model(str(c), torch.device("cpu"))), c
    assert str(saved[-1]) in s["error"]  # the newest, oldest first


# ---------------------------------------------------------------------------- reward models


def rm_args(qwen2_dir, *extra):
    return ["model.template=none", f"model.path={qwen2_dir}", "train.steps=6", "train.batch_size=8",
            "data.synthetic_train=64", "data.synthetic_test=16", "run.progress=false", "run.threads=1",
            "train.warmup_steps=2", *extra]


def test_rm_one_nan_step_is_skipped_and_training_goes_on(tmp_path, qwen2_dir, monkeypatch, caplog):
    train_reward_model(load_rm_config(None, rm_args(qwen2_dir)), tmp_path / "clean")
    real, calls = rm_module.bradley_terry_loss, []

    def loss(chosen, rejected):  # once a step: NaN at step 3
        calls.append(1)
        out = real(chosen, rejected)
        return out * float("nan") if len(calls) == 3 else out

    monkeypatch.setattr(rm_module, "bradley_terry_loss", loss)
    s = train_reward_model(load_rm_config(None, rm_args(qwen2_dir)), tmp_path / "nan")
    assert s.get("error") is None and s["model_dir"] and (tmp_path / "nan" / "model").is_dir()
    rows = read_metrics(tmp_path / "nan")
    assert [r["skipped"] for r in rows] == [0, 0, 1, 0, 0, 0]
    assert "step 3 skipped: the loss is nan" in caplog.text
    assert [r["lr"] for r in rows] == pytest.approx([r["lr"] for r in read_metrics(tmp_path / "clean")])


def test_rm_huge_lr_skips_then_stops_instead_of_raising(tmp_path, qwen2_dir, capsys):
    out = tmp_path / "run"
    args = rm_args(qwen2_dir, "train.lr=1e30", "train.max_grad_norm=0", "train.max_bad_steps=2",
                   "train.warmup_steps=0", "train.schedule=constant", "train.steps=20")
    s = train_reward_model(load_rm_config(None, args), out)
    assert "2 consecutive steps were skipped (train.max_bad_steps=2)" in s["error"] and "train.lr" in s["error"]
    assert s["interrupted"] and s["model_dir"] is None and not (out / "model").exists()
    rows = read_metrics(out)
    assert [r["skipped"] for r in rows[-2:]] == [1, 1] and len(rows) < 20
    assert json.loads((out / "summary.json").read_text())["error"] == s["error"]
    assert cli_main(["rm", "--out", str(tmp_path / "cli"), "--no-progress"] + args) == 1
    assert "train.lr" in capsys.readouterr().err
