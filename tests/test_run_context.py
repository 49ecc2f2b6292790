"""One run context for every training loop (`thinkrl.train.context.TrainingRun`): GRPO, SFT,
reward models and on-policy distillation share its checkpoints and --resume (a run stopped by
Ctrl-C or killed mid-run and resumed ends as the uninterrupted run), its refusal to checkpoint
NaN weights, its NaN/inf step policy and its thread handling."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from tests.test_bad_steps import rm_args
from tests.test_sft import task_rows, tiny_overrides, write_jsonl
from tests.test_threads import two_threads  # noqa: F401 (a fixture)
from tests.test_trainer import drop_timing, random_model_overrides, small_dataset
from thinkrl import checkpoint as ckpt
from thinkrl.cli import main as cli_main
from thinkrl.config import load_config
from thinkrl.distill.config import load_distill_config
from thinkrl.distill.onpolicy import OnPolicyDistiller
from thinkrl.metrics import read_metrics
from thinkrl.policy import load_model, load_tokenizer
from thinkrl.train.grpo import GRPOTrainer
from thinkrl.train.reward_model import RMTrainer, load_rm_config
from thinkrl.train.sft import SFTTrainer, load_sft_config

CPU = torch.device("cpu")


# the caller's thread count is 2 here, which every run must give back; the runs themselves take 1
pytestmark = pytest.mark.usefixtures("two_threads")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A small student sharing the embedded teacher's tokenizer (on-policy distillation)."""
    from thinkrl.task.build import build_model

    path = tmp_path_factory.mktemp("student")
    tok = load_tokenizer("embedded")
    build_model(tok, 0, hidden=32, layers=2, heads=4, intermediate=64, arch="qwen2").save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def rm(qwen2_dir, out, resume=False, **extra):
    args = rm_args(qwen2_dir, "train.save_every=2", "train.eval_every=3", *[f"{k}={v}" for k, v in extra.items()])
    return RMTrainer(load_rm_config(None, args), out, resume)


def on_policy(student, out, resume=False, **extra):
    base = {"mode": "on_policy", "student.path": student, "teacher.path": "embedded", "on_policy.steps": 4,
            "on_policy.prompts_per_step": 2, "on_policy.samples_per_prompt": 2, "on_policy.max_new_tokens": 12,
            "on_policy.lr": 1e-2, "eval.size": 4, "eval.every": 3, "eval.max_new_tokens": 12, "run.progress": False,
            "on_policy.save_every": 2, "run.threads": 1, "data.max_prompts": 64, **extra}
    return OnPolicyDistiller(load_distill_config(None, [f"{k}={v}" for k, v in base.items()]), out, resume)


def sft(tmp_path, out, resume=False, **extra):
    data = write_jsonl(tmp_path / "d.jsonl", task_rows(15))
    return SFTTrainer(load_sft_config(None, tiny_overrides(data, **extra)), out, resume)


def grpo(qwen2_dir, tmp_path, out, resume=False, **extra):
    overrides = random_model_overrides(qwen2_dir, small_dataset(tmp_path), **{"run.threads": 1, **extra})
    return GRPOTrainer(load_config(None, overrides), out, resume)


def at_step(trainer, step: int, action):
    """The trainer's own step, with `action()` done as step `step` begins (fault injection)."""
    name = "train_step" if isinstance(trainer, RMTrainer) else "_logged_step"
    real = getattr(trainer, name)

    def wrapped():
        if trainer.step == step - 1:
            action()
        return real()

    setattr(trainer, name, wrapped)
    return trainer


def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)  # the run's handler takes it: the step finishes, then a checkpoint


def crash():
    raise RuntimeError("killed")


def same_weights(a, b):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


def same_lines(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(drop_timing(a), drop_timing(b)):
        assert ra.keys() == rb.keys(), ra["step"]
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], abs=1e-6), (ra["step"], k)


# ---------------------------------------------------------------- resume = the uninterrupted run


def test_reward_model_stopped_by_ctrl_c_resumes_into_the_uninterrupted_run(tmp_path, qwen2_dir, capsys):
    whole = rm(qwen2_dir, tmp_path / "whole").run()
    assert whole["model_dir"] and [c.name for c in ckpt.list_checkpoints(tmp_path / "whole" / "checkpoints")] == \
        ["step_000004", "step_000006"]
    stopped = at_step(rm(qwen2_dir, tmp_path / "part"), 3, ctrl_c).run()  # SIGINT while step 3 runs
    assert stopped["interrupted"] and stopped["error"] is None and stopped["steps"] == 3
    assert stopped["model_dir"] is None and not (tmp_path / "part" / "model").exists()  # never served half-trained
    assert ckpt.latest_checkpoint(tmp_path / "part" / "checkpoints").name == "step_000003"
    assert "stopped at step 3 (SIGINT); checkpoint written" in capsys.readouterr().out
    assert torch.get_num_threads() == 2
    resumed = rm(qwen2_dir, tmp_path / "part", resume=True)
    assert resumed.step == 3
    s = resumed.run()
    assert s["resumed_from"].endswith("step_000003") and not s["interrupted"]
    same_lines(read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "part"))
    for k in ("test_accuracy", "score_center", "test"):
        assert s[k] == pytest.approx(whole[k], abs=1e-6), k
    assert s["train"]["final_loss"] == pytest.approx(whole["train"]["final_loss"], abs=1e-6)
    from thinkrl.rewards.scorer import load_reward_backbone

    same_weights(load_reward_backbone(whole["model_dir"], CPU), load_reward_backbone(s["model_dir"], CPU))


def test_reward_model_resume_from_the_command_line(tmp_path, qwen2_dir, capsys):
    out = tmp_path / "run"
    args = ["--out", str(out), "--no-progress"] + rm_args(qwen2_dir, "train.save_every=2")
    killed = at_step(rm(qwen2_dir, out), 4, crash)  # dies in step 4: step 2's checkpoint is the newest
    with pytest.raises(RuntimeError, match="killed"):
        killed.run()
    assert torch.get_num_threads() == 2  # given back however the run ends
    assert cli_main(["rm", "--resume", "--out", str(out)]) == 0  # with the settings the run started with
    s = json.loads((out / "summary.json").read_text())
    assert s["resumed_from"].endswith("step_000002") and s["model_dir"] and s["train"]["steps"] == 6
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 7))
    assert cli_main(["rm", *args]) == 2 and "--resume" in capsys.readouterr().err  # the run is there: continue or replace


def test_on_policy_distillation_killed_mid_run_resumes_into_the_uninterrupted_run(tmp_path, student):
    whole = on_policy(student, tmp_path / "whole").run()
    assert whole["steps"] == 4 and whole["final_checkpoint"].endswith("step_000004") and whole["error"] is None
    killed = at_step(on_policy(student, tmp_path / "part"), 4, crash)
    with pytest.raises(RuntimeError, match="killed"):
        killed.run()
    torch.manual_seed(123)  # a fresh process's random state: the checkpoint must restore its own
    resumed = on_policy(student, tmp_path / "part", resume=True)
    assert resumed.step == 2
    s = resumed.run()
    same_lines(read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "part"))
    assert s["resumed_from"].endswith("step_000002") and s["accuracy_end"] == whole["accuracy_end"]
    same_weights(load_model(whole["student_dir"], CPU), load_model(s["student_dir"], CPU))


# ---------------------------------------------------------------- what is never saved, what is given back


def nan_weights(model):
    def poison():
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
    return poison


@pytest.mark.parametrize("loop", ["rm", "on_policy"])
def test_nan_weights_are_never_checkpointed(tmp_path, qwen2_dir, student, loop):
    trainer = rm(qwen2_dir, tmp_path / "run") if loop == "rm" else on_policy(student, tmp_path / "run")
    model = trainer.model if loop == "rm" else trainer.student
    at_step(trainer, 4, nan_weights(model))  # after step 3 the weights are NaN; step 4 saves
    s = trainer.run()
    assert s["interrupted"] and "the weights hold NaN/inf after step 4" in s["error"]
    assert "step_000002" in s["error"]  # the newest intact checkpoint, named
    assert [c.name for c in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_000002"]
    final = tmp_path / "run" / ("model" if loop == "rm" else "student")
    assert not final.exists() and json.loads((tmp_path / "run" / "summary.json").read_text())["error"] == s["error"]


def test_threads_are_given_back_when_a_loop_fails_to_start_or_fails_in_a_step(tmp_path, qwen2_dir):
    with pytest.raises(Exception):
        SFTTrainer(load_sft_config(None, tiny_overrides(tmp_path / "missing.jsonl")), tmp_path / "sft")
    assert torch.get_num_threads() == 2
    trainer = at_step(grpo(qwen2_dir, tmp_path, tmp_path / "grpo", **{"eval.every": 0}), 2, crash)
    assert torch.get_num_threads() == 1  # the run's own count while it works
    with pytest.raises(RuntimeError, match="killed"):
        trainer.run()
    assert torch.get_num_threads() == 2


# ---------------------------------------------------------------- one NaN/inf policy, one message


HUGE_LR = {
    "grpo": {"optim.lr": 1e30, "optim.max_grad_norm": 0, "optim.warmup_steps": 0, "train.max_bad_steps": 2,
             "train.steps": 12, "train.save_every": 1, "eval.every": 0, "data.eval": "none", "objective.beta": 0.04},
    "sft": {"optim.lr": 1e30, "optim.max_grad_norm": 0, "optim.warmup_steps": 0, "optim.schedule": "constant",
            "train.max_bad_steps": 2, "train.save_every": 1, "train.epochs": 4},
    "rm": {"train.lr": 1e30, "train.max_grad_norm": 0, "train.warmup_steps": 0, "train.schedule": "constant",
           "train.max_bad_steps": 2, "train.steps": 12, "train.save_every": 1},
    "on_policy": {"on_policy.lr": 1e30, "on_policy.max_grad_norm": 0, "on_policy.max_bad_steps": 2,
                  "on_policy.steps": 12, "on_policy.save_every": 1, "eval.size": 0},
}
SETTINGS = {"grpo": ("train.max_bad_steps", "optim.lr"), "sft": ("train.max_bad_steps", "optim.lr"),
            "rm": ("train.max_bad_steps", "train.lr"), "on_policy": ("on_policy.max_bad_steps", "on_policy.lr")}


@pytest.mark.parametrize("loop", list(HUGE_LR))
def test_every_loop_stops_after_bad_steps_the_same_way(tmp_path, qwen2_dir, student, loop):
    out = tmp_path / "run"
    kw = HUGE_LR[loop]
    trainer = {"grpo": lambda: grpo(qwen2_dir, tmp_path, out, **kw), "sft": lambda: sft(tmp_path, out, **kw),
               "rm": lambda: RMTrainer(load_rm_config(None, rm_args(qwen2_dir, *[f"{k}={v}" for k, v in kw.items()])),
                                       out),
               "on_policy": lambda: on_policy(student, out, **kw)}[loop]()
    s = trainer.run()
    limit, lr = SETTINGS[loop]
    assert s["interrupted"]
    assert s["error"].startswith(f"stopped: 2 consecutive steps were skipped ({limit}=2); the last because the ")
    assert f"Likely cause: the learning rate may be too high ({lr})" in s["error"]
    newest = ckpt.latest_checkpoint(out / "checkpoints")
    assert f"the newest checkpoint is {newest}" in s["error"] and ckpt.step_of(newest) < trainer.step
    assert all(torch.isfinite(w).all() for w in load_file(str(newest / "model.safetensors")).values())
    rows = [r for r in read_metrics(out) if r["step"] > 0]
    assert [r["skipped"] for r in rows[-2:]] == [1, 1] and rows[-1]["step"] == trainer.step
    assert json.loads((out / "summary.json").read_text())["error"] == s["error"]
    assert torch.get_num_threads() == 2


def test_the_new_settings_are_checked_at_start(student):
    from thinkrl.config import ConfigError

    with pytest.raises(ConfigError, match="on_policy.max_bad_steps must be >= 1"):
        load_distill_config(None, ["mode=on_policy", f"student.path={student}", "on_policy.max_bad_steps=0"])
    with pytest.raises(ConfigError, match="train.save_every must be >= 0.*\n.*train.keep_checkpoints must be >= 1"):
        load_rm_config(None, ["train.save_every=-1", "train.keep_checkpoints=0"])
    assert load_rm_config(None, []).train.save_every == 250
