"""R1 stage 4: each row's type picks its rewards; every reward is logged per type."""

import json

import pytest

from thinkrl.config import ConfigError, load_config
from thinkrl.metrics import read_metrics
from thinkrl.rewards.combine import TypedRewards
from thinkrl.train.grpo import GRPOTrainer
from tests.test_trainer import random_model_overrides

GOOD = " <think>1+1=2</think> <answer>2</answer>"
LOOSE = "so 2"


def test_each_type_gets_its_own_weighted_rewards():
    rewards = TypedRewards({"accuracy": 1.0}, {"reasoning": {"accuracy": 1.0, "format": 0.5},
                                               "general": {"format_lenient": 2.0}})
    rows = [{"answer": "2", "type": "reasoning"}, {"answer": "2", "type": "reasoning"},
            {"answer": "2", "type": "general"}, {"answer": "2"}, {"answer": "2", "type": "unknown"}]
    texts = [GOOD, LOOSE, GOOD, GOOD, LOOSE]
    total, per = rewards(texts, rows)
    # reasoning: 1 + 0.5 (both right) / 0 + 0; general: 2 × lenient format; default: accuracy
    assert total == [1.5, 0.0, 2.0, 1.0, 0.0]
    assert per["reasoning/accuracy"] == [1.0, 0.0, None, None, None]
    assert per["reasoning/format"] == [1.0, 0.0, None, None, None]
    assert per["general/format_lenient"] == [None, None, 1.0, None, None]
    assert per["accuracy"] == [None, None, None, 1.0, 0.0]


def test_params_reach_only_the_rewards_that_name_them():
    rewards = TypedRewards({"accuracy": 1.0}, {"general": {"language": 1.0}},
                           params={"language": {"lang": "en"}})
    assert rewards.sets["general"].params == {"language": {"lang": "en"}}
    assert rewards.sets[None].params == {"accuracy": {}}


def test_config_checks_the_reward_names_of_every_type():
    with pytest.raises(ConfigError, match="rewards.by_type.general names unknown reward 'helpfullness'"):
        load_config(None, ["rewards.by_type={general: {helpfullness: 1.0}}"])
    with pytest.raises(ConfigError, match="rewards.by_type.general is empty"):
        load_config(None, ["rewards.by_type={general: {}}"])
    cfg = load_config(None, ["rewards.by_type={general: {format_lenient: 1.0}}",
                             "rewards.params={format_lenient: {}}"])
    assert cfg.rewards.by_type == {"general": {"format_lenient": 1.0}}


def test_a_mixed_run_logs_every_reward_per_type(tmp_path, qwen2_dir):
    data = tmp_path / "mixed.jsonl"
    rows = [{"q": f"What is {a}+{b}?", "a": str(a + b), "type": "reasoning" if a % 2 else "general"}
            for a in range(8) for b in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = random_model_overrides(qwen2_dir, data, **{"train.steps": 2, "train.save_every": 0, "eval.every": 0,
                                                       "data.eval": "none", "train.prompts_per_step": 4})
    over.append("rewards.by_type={reasoning: {accuracy: 1.0, format: 1.0}, general: {tag_count: 1.0}}")
    trainer = GRPOTrainer(load_config(None, over), tmp_path / "run")
    trainer.run()
    metrics = [m for m in read_metrics(tmp_path / "run") if "reward" in m]
    assert metrics
    seen = {k for m in metrics for k in m}
    assert {"rewards/reasoning/accuracy", "rewards/reasoning/format", "rewards/general/tag_count"} <= seen
