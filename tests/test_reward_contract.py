"""The reward contract as the trainer and `thinkrl score` use it: settings per reward,
failures and hangs scored `on_error` and logged with their input, reasons, and the
offline scorer on real labelled answers."""

import json
import logging
import time

import pytest

from thinkrl.cli import main
from thinkrl.config import ConfigError, load_config
from thinkrl.rewards.combine import WeightedRewards

from .shared_data import DATA, needs_data
HERE = "tests.test_reward_contract"


def hanging_reward(completions, **kwargs):
    time.sleep(60)
    return [1.0] * len(completions)


def short_reward(completions, **kwargs):
    return [1.0]


def settings_reward(completions, scale=1.0, completion_lengths=None, level=None, **kwargs):
    lengths = completion_lengths or [0] * len(completions)
    return [scale * n + (lv or 0) for n, lv in zip(lengths, level or [None] * len(completions))]


def test_settings_lengths_and_columns_reach_the_reward():
    ws = WeightedRewards({f"{HERE}:settings_reward": 1.0}, {f"{HERE}:settings_reward": {"scale": 2.0}})
    # rows with different columns: a missing one arrives as None
    total, per = ws(["a", "b"], [{"level": 10}, {"answer": "4"}], completion_lengths=[3, 5])
    assert per[f"{HERE}:settings_reward"] == [16.0, 10.0] and total == [16.0, 10.0]


@pytest.mark.parametrize("isolate", [True, False])
def test_a_hanging_reward_scores_on_error_and_the_run_goes_on(isolate, caplog):
    name = f"{HERE}:hanging_reward"
    ws = WeightedRewards({name: 1.0, "format": 1.0}, timeout_s=1.0, isolate=isolate)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="thinkrl.rewards"):
        total, per = ws(["<think>a</think><answer>1</answer>", "x"], [{"answer": "1"}, {"answer": "2"}])
    assert time.monotonic() - t0 < 10
    assert per[name] == [0.0, 0.0] and per["format"] == [1.0, 0.0] and total == [1.0, 0.0]
    assert ws.errors == {name: 1, "format": 0}
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "hanging_reward" in msg and "<think>a</think>" in msg and "'answer': '1'" in msg  # with its input


def test_on_error_none_makes_failures_not_applicable():
    name = f"{HERE}:short_reward"
    ws = WeightedRewards({name: 1.0}, on_error=None)
    total, per = ws(["a", "b"], [{}, {}])
    assert per[name] == [None, None] and total == [0.0, 0.0]
    [why] = {s.reason for s in ws.scores(["a", "b"], [{}, {}])[name]}
    assert "returned 1 values for 2 completions" in why


def test_config_names_reward_settings_and_checks_them(tmp_path):
    cfg = load_config(None, ["rewards.params.accuracy.source=boxed", "rewards.timeout_s=5"])
    assert cfg.rewards.params == {"accuracy": {"source": "boxed"}} and cfg.rewards.timeout_s == 5.0
    with pytest.raises(ConfigError, match="rewards.params.acuracy.*did you mean 'accuracy'"):
        load_config(None, ["rewards.params.acuracy.source=boxed"])
    with pytest.raises(ConfigError, match="rewards.timeout_s"):
        load_config(None, ["rewards.timeout_s=0"])
    with pytest.raises(ConfigError, match="did you mean 'format'"):
        load_config(None, ["rewards.weights={formt: 1.0}"])


@needs_data
def test_score_command_on_real_labelled_answers(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    labels = []
    with open(src, "w") as f:
        for path in sorted((DATA / "labeled_responses").glob("*.jsonl")):
            for problem in map(json.loads, path.read_text().splitlines()):
                for o in problem["outputs"]:
                    f.write(json.dumps({"prompt": problem["question"], "completion": o["response"].replace("ки", ""),
                                        "answer": problem["ground_truth"]}) + "\n")
                    labels.append(str(o["label"]))
        f.write("{broken json\n")
        f.write(json.dumps({"prompt": "no completion"}) + "\n")
    out = tmp_path / "out.jsonl"
    rc = main(["score", "--rewards", "accuracy,format", "--data", str(src), "--out", str(out),
               "--param", "accuracy.source=final"])
    assert rc == 0
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == len(labels) + 2 == 452  # one output row per input row
    assert [r["line"] for r in rows] == list(range(1, 453))
    assert "not JSON" in rows[-2]["error"] and "completion" in rows[-1]["error"]
    judged = [(r["rewards"]["accuracy"], lab) for r, lab in zip(rows, labels) if lab in ("True", "False")]
    agree = sum((v == 1.0) == (lab == "True") for v, lab in judged)
    print(f"labelled answers: {agree}/{len(judged)} agree")
    assert agree / len(judged) >= 0.99
    zeros = [r for r in rows[:-2] if r["rewards"]["accuracy"] == 0.0]
    assert zeros and all(r["reasons"].get("accuracy") for r in zeros)  # every zero says why
    # these are MATH-style answers without R1 tags: the strict format reward says so
    assert all(r["rewards"]["format"] == 0.0 and "missing" in r["reasons"]["format"] for r in rows[:-2])
    printed = capsys.readouterr().out
    assert "450 rows scored, 2 bad lines" in printed and "accuracy" in printed


def test_score_command_refuses_unknown_rewards_and_bad_params(tmp_path, capsys):
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"completion": "x", "answer": "1"}) + "\n")
    assert main(["score", "--rewards", "acuracy", "--data", str(f), "--out", str(tmp_path / "o")]) == 2
    assert "registered" in capsys.readouterr().err
    assert main(["score", "--rewards", "accuracy", "--data", str(f), "--out", str(tmp_path / "o"),
                 "--param", "format.x=1"]) == 2
    assert main(["score", "--rewards", "accuracy", "--data", str(tmp_path / "missing.jsonl"),
                 "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_length_shaping_beyond_the_completion_budget_fails_at_start():
    with pytest.raises(ConfigError, match="rewards.params.overlong.max_length=80"):
        load_config(None, ["rewards.weights={accuracy: 1, overlong: 1}"])
    cfg = load_config(None, ["rewards.weights={accuracy: 1, cosine_length: 1}", "rewards.params.cosine_length.max_length=79"])
    assert cfg.rewards.params["cosine_length"]["max_length"] == 79


def test_training_logs_every_reward_and_survives_a_hanging_one(tmp_path, qwen2_dir):
    from tests.test_trainer import random_model_overrides, small_dataset
    from thinkrl.metrics import read_metrics
    from thinkrl.train.grpo import GRPOTrainer

    weights = ("{accuracy: 1, format: 1, tag_count: 0.5, format_lenient: 0.5, language: 0.1, repetition: 0.1, "
               f"overlong: 1, cosine_length: 0.1, '{HERE}:hanging_reward': 1, '{HERE}:settings_reward': 0.01}}")
    cfg = load_config(None, random_model_overrides(qwen2_dir, small_dataset(tmp_path), **{
        "train.steps": 2, "eval.every": 0, "train.save_every": 0, "rewards.weights": weights,
        "rewards.params.overlong": "{max_length: 8, cache_length: 4}",
        "rewards.params.cosine_length": "{max_length: 8}", "rewards.timeout_s": 1}))
    GRPOTrainer(cfg, tmp_path / "run").run()
    rows = read_metrics(tmp_path / "run")
    step = rows[-1]
    for name in ("accuracy", "format", "tag_count", "format_lenient", "repetition", "overlong", "cosine_length"):
        assert f"rewards/{name}" in step and f"rewards/{name}_std" in step
    assert step[f"rewards/{HERE}:hanging_reward"] == 0.0 and step[f"rewards/{HERE}:hanging_reward_errors"] == 2
    # the trainer passes token lengths and the level column; settings_reward sums them
    assert step[f"rewards/{HERE}:settings_reward"] > 0
    assert step["rewards/overlong_errors"] == 0
