"""A small pipeline of real stages, end to end: R1-Zero GRPO, cold start, SFT, a reward model,
evaluations and the table; a second run does nothing; a changed stage re-runs downstream."""

import json

import pytest
import yaml

from thinkrl.cli import main as cli_main

SMALL = {
    "general": {"kind": "general", "settings": {"seed": 0}},
    "zero": {"kind": "grpo", "settings": {"train": {"steps": 2, "prompts_per_step": 2, "save_every": 0},
                                          "rollout": {"group_size": 4}, "eval": {"every": 0},
                                          "data": {"eval_size": 8}, "run": {"progress": False}}},
    "coldstart": {"kind": "coldstart", "settings": {"model": "${zero.model}", "prompts": {"limit": 12},
                                                    "sampling": {"n": 2}}},
    "sft_coldstart": {"kind": "sft", "settings": {"model": {"path": "embedded"}, "data": {"train": "${coldstart.data}"},
                                                  "train": {"epochs": 1, "batch_size": 8, "micro_batch_size": 8},
                                                  "run": {"progress": False}}},
    "rm_helpful": {"kind": "rm", "settings": {"data": {"train": "${general.prefs_helpful_train}",
                                                       "test": "${general.prefs_helpful_test}", "part": "summary",
                                                       "rule": "helpfulness"},
                                              "model": {"layers": 1}, "train": {"steps": 3, "batch_size": 4},
                                              "run": {"progress": False}}},
    "eval_zero": {"kind": "eval", "settings": {"model": "${zero.model}", "samples": 2, "limit": 8,
                                               "general": "${general.test}", "general_limit": 4, "max_new_tokens": 60}},
    "eval_sft": {"kind": "eval", "settings": {"model": "${sft_coldstart.model}", "samples": 2, "limit": 8,
                                              "max_new_tokens": 60}},
    "report": {"kind": "report", "settings": {"rows": {"R1-Zero": "${eval_zero.metrics}",
                                                       "cold-start SFT": "${eval_sft.metrics}"},
                                              "compute": {"R1-Zero": "${zero.dir}"}}},
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    cfg = root / "small.yaml"
    cfg.write_text(yaml.safe_dump({"stages": SMALL}))
    assert cli_main(["pipeline", "--config", str(cfg), "--out", str(root / "run")]) == 0
    return root, cfg


def test_every_stage_finishes_and_the_table_is_written(ran):
    root, _ = ran
    index = json.loads((root / "run" / "stages.json").read_text())
    assert set(index) == set(SMALL)
    table = (root / "run" / "stages" / index["report"].split("/")[-1] / "table.md").read_text()
    assert "| R1-Zero |" in table and "| cold-start SFT |" in table and "cons@2" in table
    metrics = json.loads(next((root / "run" / "stages").glob("eval_zero-*/metrics.json")).read_text())
    assert 0 <= metrics["pass@1"] <= 1 and metrics["n_questions"] == 8 and "helpful" in metrics
    rm = json.loads(next((root / "run" / "stages").glob("rm_helpful-*/stage.json")).read_text())
    assert "test_accuracy" in rm["summary"]


def test_a_second_run_does_nothing_and_a_change_reruns_downstream(ran, capsys):
    root, cfg = ran
    capsys.readouterr()
    assert cli_main(["pipeline", "--config", str(cfg), "--out", str(root / "run")]) == 0
    out = capsys.readouterr().out
    assert "done in" not in out.split("stages under")[1].split("thinkrl pipeline: done")[0]  # no stage ran
    assert cli_main(["pipeline", "--config", str(cfg), "--out", str(root / "run"), "--plan", "eval_sft.samples=3"]) == 0
    plan = {line.split()[0]: line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]}
    assert plan["eval_sft"] == "run" and plan["report"] == "run"
    assert all(plan[n] == "cached" for n in ("general", "zero", "coldstart", "sft_coldstart", "rm_helpful", "eval_zero"))
