"""End-to-end GRPO: the reward rises on the embedded model, any local causal LM trains, and a
run killed with SIGKILL resumes into the same run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from thinkrl.config import load_config
from thinkrl.metrics import read_metrics
from thinkrl.train.grpo import GRPOTrainer

ROOT = Path(__file__).resolve().parent.parent


def small_dataset(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    rows = [{"q": f"What is {a}+{b}?", "a": str(a + b), "level": 1 + (a > 5)} for a in range(10) for b in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def random_model_overrides(model_dir, data, **extra):
    base = {
        "model.path": str(model_dir), "data.train": str(data), "data.eval": str(data), "data.eval_size": 8,
        "data.question_field": "q", "data.answer_field": "a", "train.prompts_per_step": 2,
        "rollout.group_size": 4, "rollout.max_new_tokens": 8, "eval.max_new_tokens": 8, "train.steps": 4,
        "train.save_every": 2, "eval.every": 2, "run.progress": False, "run.seed": 3,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def dies_in_step(trainer, n: int):
    """The trainer's run raises RuntimeError("killed") in step n, after step n-1 was logged."""
    real_step = trainer.train_step

    def step():
        if trainer.step == n - 1:
            raise RuntimeError("killed")
        return real_step()

    trainer.train_step = step


def resumed_equals_whole(overrides, root, die_in: int, check=None):
    """A GRPO run killed in step `die_in` and resumed from its newest checkpoint logs what the
    uninterrupted run logs (timings aside); `check(resumed)` looks at the resumed trainer."""
    GRPOTrainer(load_config(None, overrides), root / "whole").run()
    part = GRPOTrainer(load_config(None, overrides), root / "part")
    dies_in_step(part, die_in)
    with pytest.raises(RuntimeError, match="killed"):
        part.run()
    resumed = GRPOTrainer(load_config(None, overrides), root / "part", resume=True)
    if check:
        check(resumed)
    resumed.run()
    a, b = drop_timing(read_metrics(root / "whole")), drop_timing(read_metrics(root / "part"))
    assert [r["step"] for r in b] == [r["step"] for r in a]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], abs=1e-6), (ra["step"], k)
    return a


def drop_timing(rows):
    return [{k: v for k, v in r.items() if not k.startswith("timing/") and k not in ("time", "step_seconds")} for r in rows]


def test_grpo_raises_reward_on_the_embedded_model(tmp_path):
    cfg = load_config(None, ["train.steps=30", "eval.every=0", "data.eval=none", "run.progress=false",
                             "train.save_every=0", "optim.lr=3e-5"])
    summary = GRPOTrainer(cfg, tmp_path).run()
    rows = read_metrics(tmp_path)[1:]
    assert summary["steps"] == 30 and len(rows) == 30
    first = sum(r["rewards/accuracy"] for r in rows[:8]) / 8
    last = sum(r["rewards/accuracy"] for r in rows[-8:]) / 8
    assert last > first + 0.1, (first, last)
    assert (tmp_path / "report.html").exists()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_train_runs_any_local_causal_lm(tmp_path, arch, qwen2_dir, llama_dir):
    from transformers import AutoModelForCausalLM

    model_dir = qwen2_dir if arch == "qwen2" else llama_dir
    cfg = load_config(None, random_model_overrides(model_dir, small_dataset(tmp_path), **{"objective.beta": 0.04,
                      "objective.mu": 2, "train.micro_batch_size": 4}))
    trainer = GRPOTrainer(cfg, tmp_path / "run")
    assert trainer.ref is not None
    summary = trainer.run()
    assert summary["steps"] == 4 and summary["accuracy_start"] is not None
    final = Path(summary["final_checkpoint"])
    loaded = AutoModelForCausalLM.from_pretrained(final)
    for (name, p), q in zip(trainer.policy.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), name
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(r["kl"] >= 0 for r in rows[1:])
    for name in ("config.yaml", "summary.json", "report.html"):
        assert (tmp_path / "run" / name).exists()


def test_no_reference_model_when_beta_is_zero(tmp_path, qwen2_dir):
    cfg = load_config(None, random_model_overrides(qwen2_dir, small_dataset(tmp_path), **{"train.steps": 1}))
    assert GRPOTrainer(cfg, tmp_path / "run").ref is None


def test_resume_continues_the_same_run(tmp_path, qwen2_dir):
    data = small_dataset(tmp_path)
    overrides = random_model_overrides(qwen2_dir, data, **{"objective.beta": 0.04, "objective.ref_reset_every": 3})
    whole = GRPOTrainer(load_config(None, overrides), tmp_path / "whole")
    whole.run()

    part = GRPOTrainer(load_config(None, overrides), tmp_path / "part")
    dies_in_step(part, 4)  # step 3 is logged but not checkpointed; the process dies in step 4
    with pytest.raises(RuntimeError, match="killed"):
        part.run()
    assert [r["step"] for r in read_metrics(tmp_path / "part")] == [0, 1, 2, 3]
    resumed = GRPOTrainer(load_config(None, overrides), tmp_path / "part", resume=True)
    assert resumed.step == 2
    resumed.run()
    a, b = drop_timing(read_metrics(tmp_path / "whole")), drop_timing(read_metrics(tmp_path / "part"))
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], abs=1e-6), (ra["step"], k)


def test_sigkill_then_resume_from_the_command_line(tmp_path, qwen2_dir):
    data = small_dataset(tmp_path)
    overrides = random_model_overrides(qwen2_dir, data, **{"train.steps": 40, "train.save_every": 5, "eval.every": 0})
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "thinkrl.cli", "train", "--config", str(tmp_path / "none.yaml"), "--out", str(out)]
    (tmp_path / "none.yaml").write_text("{}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd + overrides, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoints" / "step_000010").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoints" / "step_000010").exists(), proc.stdout.read().decode()[-2000:]
    res = subprocess.run(cmd + ["--resume"] + overrides, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "resuming from" in res.stdout
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(41))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["resumed_from"]


def test_ctrl_c_finishes_the_step_and_writes_a_checkpoint(tmp_path, qwen2_dir):
    data = small_dataset(tmp_path)
    overrides = random_model_overrides(qwen2_dir, data, **{"train.steps": 200, "train.save_every": 0, "eval.every": 0})
    out = tmp_path / "run"
    (tmp_path / "none.yaml").write_text("{}\n")
    cmd = [sys.executable, "-m", "thinkrl.cli", "train", "--config", str(tmp_path / "none.yaml"), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd + overrides, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_metrics(out)) < 4:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, output[-2000:]
    rows = read_metrics(out)
    steps = [r["step"] for r in rows]
    assert steps == list(range(len(rows))) and 3 <= steps[-1] < 200
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert ckpts and ckpts[-1].name == f"step_{steps[-1]:06d}"  # the stopped step is saved
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True


def test_profile_breaks_the_update_down(tmp_path, qwen2_dir):
    cfg = load_config(None, random_model_overrides(qwen2_dir, small_dataset(tmp_path), **{
        "train.steps": 2, "objective.beta": 0.04, "objective.mu": 2, "train.profile": True, "eval.every": 0}))
    GRPOTrainer(cfg, tmp_path / "run").run()
    row = read_metrics(tmp_path / "run")[-1]
    parts = {k: row[f"profile/{k}"] for k in ("old_logprobs", "ref_logprobs", "forward_backward", "optimizer")}
    assert all(v > 0 for v in parts.values()), parts
    assert parts["old_logprobs"] + parts["ref_logprobs"] == pytest.approx(row["timing/logprobs"], rel=1e-6)
    assert parts["forward_backward"] + parts["optimizer"] <= row["timing/update"] + 1e-9
    assert parts["forward_backward"] + parts["optimizer"] >= 0.8 * row["timing/update"]
    assert "parts (--profile)" in (tmp_path / "run" / "report.html").read_text()
