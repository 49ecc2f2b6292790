"""The default R1 pipeline's definition: configs/r1.yaml spells it out, overrides reach the
right stage, mistakes fail at start."""

from pathlib import Path

import pytest

from thinkrl.pipeline.graph import PipelineError
from thinkrl.pipeline.run import build, default_stages, load_stages, stages_to_yaml
from thinkrl.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent


def test_configs_r1_yaml_is_the_default_pipeline():
    written = load_stages(str(ROOT / "configs" / "r1.yaml"), [])
    assert stages_to_yaml(written) == stages_to_yaml(default_stages())


def test_the_default_graph_has_the_r1_shape(tmp_path):
    g = build(None, [], tmp_path)
    order = g.order
    chain = ["zero", "coldstart", "sft_coldstart", "reasoning_rl", "reject", "sft_stage3", "all_rl", "distill"]
    assert [order.index(n) for n in chain] == sorted(order.index(n) for n in chain)
    assert set(g.inputs("all_rl")) == {"sft_stage3", "mix", "rm_helpful", "rm_harmless"}
    assert g.inputs("student_rl") == []  # the RL-only student starts from the student base
    assert order[-1] == "report"


def test_overrides_reach_one_stage_and_change_its_key_and_downstream(tmp_path):
    base = build(None, [], tmp_path)
    changed = build(None, ["reasoning_rl.train.steps=7"], tmp_path)
    assert changed.stages["reasoning_rl"].settings["train"]["steps"] == 7
    differs = {n for n in base.order if base.keys[n] != changed.keys[n]}
    assert {"reasoning_rl", "reject", "sft_stage3", "all_rl", "distill", "report"} <= differs
    assert not differs & {"zero", "coldstart", "sft_coldstart", "general", "rm_helpful", "student_rl", "eval_base"}


def test_an_override_of_a_setting_stages_share_reaches_one_stage(tmp_path):
    # both SFT stages start from one optimiser setting; overriding it in one stage must not reach
    # the other (it once did, and re-ran cold-start SFT when only a later stage had changed)
    base = build(None, [], tmp_path)
    assert base.stages["sft_stage3"].settings["optim"] == base.stages["sft_coldstart"].settings["optim"]
    changed = build(None, ["sft_stage3.optim.lr=0.0123"], tmp_path)
    assert changed.stages["sft_stage3"].settings["optim"]["lr"] == 0.0123
    assert changed.stages["sft_coldstart"].settings["optim"] == base.stages["sft_coldstart"].settings["optim"]
    differs = {n for n in base.order if base.keys[n] != changed.keys[n]}
    assert differs == {"sft_stage3", "eval_sft_stage3", "all_rl", "eval_all_rl", "distill", "eval_distill", "report"}


def test_mistakes_fail_at_start(tmp_path, capsys):
    with pytest.raises(PipelineError, match="no stage 'zer0'"):
        load_stages(None, ["zer0.train.steps=5"])
    with pytest.raises(PipelineError, match="STAGE.key=value"):
        load_stages(None, ["steps=5"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  a: {kind: grpo, setings: {}}\n")
    with pytest.raises(PipelineError, match="must have `kind:`"):
        load_stages(str(bad), [])
    assert cli_main(["pipeline", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "must have" in capsys.readouterr().err


def test_plan_prints_and_runs_nothing(tmp_path, capsys):
    assert cli_main(["pipeline", "--plan", "--out", str(tmp_path / "r1")]) == 0
    out = capsys.readouterr().out
    assert "23 stages" in out and "all_rl" in out
    assert not (tmp_path / "r1" / "stages").exists()


def test_overwrite_empties_a_pipeline_root_and_nothing_else(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not the pipeline's")
    assert cli_main(["pipeline", "--plan", "--overwrite", "--out", str(mine)]) == 2
    assert (mine / "notes.txt").read_text() == "not the pipeline's"
    root = tmp_path / "r1"
    (root / "zero-0123abcd").mkdir(parents=True)
    (root / "stages.json").write_text("{}")
    assert cli_main(["pipeline", "--plan", "--overwrite", "--out", str(root)]) == 0
    assert not (root / "zero-0123abcd").exists()
