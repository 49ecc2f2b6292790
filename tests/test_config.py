"""Configs: YAML plus command-line overrides, and start-up validation whose messages say
what to change."""

import pytest

from thinkrl.config import ConfigError, load_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_are_the_main_job():
    cfg = load_config()
    assert cfg.model.path == "embedded" and cfg.model.template == "r1_zero"
    assert cfg.rollout.group_size >= 2 and cfg.completions_per_step == cfg.train.prompts_per_step * cfg.rollout.group_size


def test_yaml_then_overrides(tmp_path):
    p = write(tmp_path, "optim:\n  lr: 1.0e-5\nrollout:\n  group_size: 4\n  stop: ['</answer>']\n")
    cfg = load_config(p, ["rollout.group_size=16", "objective.eps_high=0.28", "rewards.weights={accuracy: 2.0}"])
    assert cfg.optim.lr == 1e-5
    assert cfg.rollout.group_size == 16
    assert cfg.objective.eps_high == 0.28
    assert cfg.rewards.weights == {"accuracy": 2.0}


def test_dr_grpo_turns_std_scaling_off_unless_asked():
    assert load_config(None, ["objective.loss_agg=dr_grpo"]).scale_std is False
    assert load_config(None, ["objective.loss_agg=dr_grpo", "objective.scale_std=true"]).scale_std is True
    assert load_config(None, []).scale_std is True


def test_misspelt_key_suggests_the_nearest(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'group_size'"):
        load_config(write(tmp_path, "rollout:\n  grup_size: 4\n"))
    with pytest.raises(ConfigError, match="did you mean 'rollout'"):
        load_config(None, ["rolout.group_size=4"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("rollout.group_size=1", "at least 2 samples per question"),
        ("train.micro_batch_size=7", "does not divide the 64 completions"),
        ("rollout.max_new_tokens=0", "max_new_tokens must be positive"),
        ("data.max_prompt_tokens=-3", "max_prompt_tokens must be positive"),
        ("objective.loss_agg=mean", "choose one of"),
        ("objective.eps_high=0.1", "eps_high must be >= objective.eps_low"),
        ("rollout.temperature=0", "temperature must be > 0"),
        ("objective.ref_reset_every=400", "no reference model to reset"),
        ("rewards.weights={acuracy: 1.0}", "did you mean 'accuracy'"),
        ("train.parallel=zero3", "use ddp .* or fsdp"),
    ],
)
def test_impossible_values_fail_at_start_with_a_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_level_field_other_than_level_is_refused_not_ignored(tmp_path):
    """data.level_field was read nowhere: a column named otherwise gave no per-level metrics,
    silently. Now it says what to do; the default (and saved run configs holding it) still load."""
    with pytest.raises(ConfigError, match="data.level_field='difficulty' is not supported.*rename that column"):
        load_config(None, ["data.level_field=difficulty"])
    assert load_config(write(tmp_path, "data:\n  level_field: level\n")).data.level_field == "level"


def test_wrong_types_are_named(tmp_path):
    with pytest.raises(ConfigError, match="rollout.group_size must be int"):
        load_config(None, ["rollout.group_size=eight"])
    with pytest.raises(ConfigError, match="optim.lr must be a number"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="is a section"):
        load_config(write(tmp_path, "optim: 3\n"))
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["lr"])


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["optim.lr=3e-6", "objective.beta=0.001"])
    p = write(tmp_path, cfg.to_yaml())
    again = load_config(p)
    assert again == cfg


def test_command_line_refuses_a_bad_config_before_loading_anything(capsys, tmp_path):
    from thinkrl.cli import main

    assert main(["zero", "--out", str(tmp_path / "run"), "rollout.group_size=1"]) == 2
    assert "at least 2 samples per question" in capsys.readouterr().err
    assert main(["zero", "--out", str(tmp_path / "run"), "--steps", "0"]) == 2
    assert "train.steps must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _load_rm_config(path):
    from thinkrl.train.reward_model import load_rm_config

    return load_rm_config(path)


def test_shipped_configs_are_valid():
    from pathlib import Path

    from thinkrl.distill.run import load_distill_config
    from thinkrl.pipeline.run import build
    from thinkrl.train.sft import load_sft_config

    folder = Path(__file__).resolve().parents[1] / "configs"
    loaders = {"sft-": load_sft_config, "distill-": load_distill_config, "rm-": _load_rm_config, "prm-": _load_rm_config,
               "r1.yaml": lambda p: build(str(p), [], "/nonexistent")}
    for path in sorted(folder.glob("*.yaml")):
        load = next((f for prefix, f in loaders.items() if path.name.startswith(prefix)), load_config)
        load(path)
    assert load_config(folder / "r1-zero-tiny.yaml") == load_config()  # it spells out the main job


def test_resume_without_a_run_says_what_to_do(capsys, tmp_path, monkeypatch):
    from thinkrl.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["zero", "--resume"]) == 2
    assert "no run under runs/ to resume" in capsys.readouterr().err
