"""Process supervision in the GRPO trainer (objective.advantage=process): the step rewards'
character ends become token ends, the outcome rewards join the last step, and the advantages
the update uses are the formula's (objective.process_advantages, against its transcription)."""

import pytest
import torch

from tests.test_process_advantages import transcription
from thinkrl.checks import ConfigError
from thinkrl.config import load_config
from thinkrl.metrics import read_metrics
from thinkrl.rewards import get_reward
from thinkrl.train.grpo import GRPOTrainer
from thinkrl.train.grpo_batch import token_ends

pytestmark = pytest.mark.usefixtures("one_thread")

PROCESS = ["data.eval=none", "eval.every=0", "train.save_every=0", "run.progress=false", "train.prompts_per_step=4",
           "rollout.group_size=4", "rollout.max_new_tokens=48", "train.micro_batch_size=16",
           "objective.advantage=process", "rewards.step_weights={column_steps: 1.0}"]


def test_the_trainers_advantages_are_the_formulas_on_the_column_steps(tmp_path):
    trainer = GRPOTrainer(load_config(None, PROCESS), tmp_path)
    s = trainer.collect()
    assert s.advantages.dim() == 2 and len(s.advantages) == 16
    decode = lambda ids: trainer.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    steps = get_reward("column_steps")(s.drawn.texts, **{k: [r.get(k) for r in s.rows] for k in s.rows[0]},
                                       prompts=[r["question"] for r in s.rows])
    token_steps = [[(k, st.score) for k, st in zip(token_ends(decode, ids, [st.end for st in row]), row)
                    if st.score is not None] for ids, row in zip(s.completion_ids, steps)]
    lengths = [len(c) for c in s.completion_ids]
    want = transcription(token_steps, 4, lengths, outcome=s.total)  # accuracy + format join the last step
    for i, n in enumerate(lengths):
        assert s.advantages[i, :n].tolist() == pytest.approx(want[i], abs=1e-5)
    assert sum(len(x) for x in token_steps) > 16  # the column steps were found
    # a token's advantage changes at step ends inside a completion: per token, not per completion
    assert any(len(set(s.advantages[i, :n].tolist())) > 1 for i, n in enumerate(lengths))
    assert "column_steps" in s.per_reward


def test_a_process_supervised_run_trains_and_logs_its_step_reward(tmp_path):
    cfg = load_config(None, PROCESS + ["train.steps=2", "rewards.weights={}"])  # step rewards alone
    trainer = GRPOTrainer(cfg, tmp_path)
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.run()
    rows = read_metrics(tmp_path)[1:]
    assert len(rows) == 2 and all(0 <= r["rewards/column_steps"] <= 1 for r in rows)
    assert all(r["skipped"] == 0 and r["grad_norm"] > 0 for r in rows)
    assert any(not torch.equal(v, before[k]) for k, v in trainer.policy.state_dict().items())


@pytest.mark.parametrize("overrides, message", [
    (["objective.advantage=process"], "needs step rewards"),
    (["rewards.step_weights={column_steps: 1.0}"], "only with objective.advantage=process"),
    (["rewards.weights={column_steps: 1.0}"], "move it to rewards.step_weights"),
    (["objective.advantage=process", "rewards.step_weights={accuracy: 1.0}"], "accuracy"),
    (["objective.advantage=steps"], "use outcome"),
    (["objective.advantage=process", "rewards.step_weights={column_steps: 1.0}", "rewards.step_split=("], "split"),
])
def test_impossible_process_settings_fail_at_start_saying_what_to_change(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
