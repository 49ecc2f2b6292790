"""One command table, parsed one way: every command that runs takes the same run options, and
a command's own flags are shortcuts for its settings."""

from __future__ import annotations

import json

import pytest

from thinkrl.cli import COMMANDS, main, parse
from thinkrl.config_io import load_into
from thinkrl.distill.config import DistillConfig


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_takes_the_same_run_options(name):
    args = parse(name, ["a.b=1", "--config", "c.yaml", "--out", "o", "--resume", "--overwrite", "x.y=z"])
    assert (args.config, args.out, args.resume, args.overwrite) == ("c.yaml", "o", True, True)
    assert args.overrides[:2] == ["a.b=1", "x.y=z"]  # in order, wherever they stood among the flags


def test_flags_are_shortcuts_for_settings_and_paths_stay_strings():
    args = parse("distill", ["--teacher", "yes", "--student", "runs/s", "--on-policy", "--no-progress", "sample.n=2"])
    cfg = load_into(DistillConfig(), None, args.overrides)
    assert cfg.teacher.path == "yes" and cfg.student.path == "runs/s"  # not YAML's True
    assert cfg.mode == "on_policy" and cfg.run.progress is False and cfg.sample.n == 2
    assert parse("eval", ["--benchmark", "gsm8k,math500", "--benchmark", "embedded"]).overrides == [
        'benchmarks=["gsm8k", "math500", "embedded"]']


def test_eval_runs_from_a_config_file_and_resume_repeats_it(tmp_path, capsys):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("model: embedded\nbenchmarks: [embedded]\neval:\n  samples: 2\n  limit: 3\n  max_new_tokens: 40\n")
    out = tmp_path / "e"
    assert main(["eval", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    first = json.loads((out / "results.json").read_text())["benchmarks"]["embedded"]
    assert first["n_questions"] == 3 and json.loads((out / "results.json").read_text())["settings"]["samples"] == 2
    assert main(["eval", "--out", str(out), "--no-progress"]) == 2  # the directory is that run's
    assert main(["eval", "--resume", "--out", str(out), "--no-progress"]) == 0  # its own config.yaml again
    assert json.loads((out / "results.json").read_text())["benchmarks"]["embedded"]["pass@1"] == first["pass@1"]


def test_every_command_has_the_same_run_section_and_old_keys_name_the_new_one():
    from thinkrl.config import ConfigError, load_config
    from thinkrl.evaluation.run import EvalRunConfig
    from thinkrl.pipeline.coldstart import ColdStartConfig
    from thinkrl.pipeline.reject import RejectConfig
    from thinkrl.sections import RunOptions
    from thinkrl.train.reward_model_config import RMConfig
    from thinkrl.train.sft_config import SFTConfig

    for cls in (DistillConfig, SFTConfig, RMConfig, ColdStartConfig, RejectConfig, EvalRunConfig):
        assert isinstance(load_into(cls(), None, ["run.threads=1"]).run, RunOptions)
    assert load_config(None, ["run.seed=3"]).run.seed == 3
    for old in ("train.seed=1", "train.threads=1", "log.progress=false"):
        with pytest.raises(ConfigError, match=r"is now 'run\."):
            load_config(None, [old])


def test_the_model_and_sampling_sections_are_declared_once():
    from thinkrl.config import Config
    from thinkrl.pipeline.coldstart import ColdStartConfig
    from thinkrl.pipeline.reject import RejectConfig
    from thinkrl.sections import EvalProtocol, ModelSection, Sampling
    from thinkrl.train.reward_model_config import RMConfig
    from thinkrl.train.sft_config import SFTConfig

    d = DistillConfig()
    for model in (Config().model, SFTConfig().model, RMConfig().model, d.teacher, d.student):
        assert isinstance(model, ModelSection)
    for sampling in (Config().rollout, ColdStartConfig().sampling, RejectConfig().sampling, d.sample, Config().eval,
                     d.eval):
        assert isinstance(sampling, Sampling)
    assert isinstance(Config().eval, EvalProtocol) and isinstance(d.eval, EvalProtocol)
