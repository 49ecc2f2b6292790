"""DAPO's dynamic sampling (rollout.dynamic_sampling): a step keeps drawing questions until
train.prompts_per_step groups carry a signal, or max_sample_rounds rounds have run; the data
order stays the seeded one and --resume continues it."""

import pytest

from tests.test_trainer import random_model_overrides, resumed_equals_whole, small_dataset
from thinkrl.config import load_config
from thinkrl.metrics import read_metrics
from thinkrl.train.grpo import GRPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

EMBEDDED = ["data.eval=none", "eval.every=0", "train.save_every=0", "run.progress=false", "train.prompts_per_step=4",
            "rollout.group_size=4", "rollout.max_new_tokens=48", "train.micro_batch_size=16", "run.seed=1"]


def groups(samples, G):
    return [samples.advantages[i:i + G] for i in range(0, len(samples.advantages), G)]


def test_a_step_keeps_drawing_until_enough_groups_carry_a_signal(tmp_path):
    trainer = GRPOTrainer(load_config(None, EMBEDDED + ["rollout.dynamic_sampling=true",
                                                        "rollout.max_sample_rounds=6"]), tmp_path)
    informative_seen = 0
    for _ in range(2):
        before = trainer.sampler.state_dict()["pos"]
        s = trainer.collect()
        drawn_groups = len(s.zero_std)
        assert s.sampling["sampling/prompts_drawn"] == drawn_groups == trainer.sampler.state_dict()["pos"] - before
        kept = groups(s, 4)
        assert len(kept) == s.sampling["sampling/informative_groups"] <= 4
        assert all(bool((g != 0).any()) for g in kept)  # every group in the update carries a signal
        assert s.sampling["sampling/filtered_frac"] == pytest.approx(sum(s.zero_std) / drawn_groups)
        assert s.sampling["sampling/short"] == int(len(kept) < 4)
        assert len(s.drawn) == 4 * drawn_groups == len(s.rows) == len(s.total)
        informative_seen += len(kept)
        if s.sampling["sampling/rounds"] > 1:  # a round drew only as many questions as were still missing
            assert drawn_groups < 4 * s.sampling["sampling/rounds"]
    assert informative_seen == 8  # the embedded base has mixed groups often enough for 6 rounds


def test_the_first_round_samples_what_a_step_without_dynamic_sampling_samples(tmp_path):
    plain = GRPOTrainer(load_config(None, EMBEDDED), tmp_path / "plain").collect()
    dynamic = GRPOTrainer(load_config(None, EMBEDDED + ["rollout.dynamic_sampling=true"]), tmp_path / "dyn").collect()
    assert plain.sampling == {} and len(plain.zero_std) == 4  # one round, every group kept
    assert len(plain.completion_ids) == 16
    assert dynamic.drawn.completion_ids[:16] == plain.drawn.completion_ids
    assert dynamic.total[:16] == plain.total
    flat = [g for g in range(4) if plain.zero_std[g]]
    kept_first = [c for g in range(4) if g not in flat for c in plain.completion_ids[4 * g: 4 * g + 4]]
    assert dynamic.completion_ids[:len(kept_first)] == kept_first


def test_when_the_rounds_run_out_the_step_trains_on_what_it_has_and_says_so(tmp_path, qwen2_dir):
    # a random model never answers right: every group is flat, so no round finds a signal
    cfg = load_config(None, random_model_overrides(qwen2_dir, small_dataset(tmp_path), **{
        "rollout.dynamic_sampling": True, "rollout.max_sample_rounds": 3, "train.steps": 2, "eval.every": 0,
        "train.save_every": 0, "data.eval": "none", "rewards.weights": "{accuracy: 1.0}"}))
    trainer = GRPOTrainer(cfg, tmp_path / "run")
    trainer.run()
    rows = read_metrics(tmp_path / "run")[1:]
    for r in rows:
        assert r["sampling/rounds"] == 3 and r["sampling/short"] == 1 and r["sampling/informative_groups"] == 0
        assert r["sampling/prompts_drawn"] == 2 * 3 and r["sampling/filtered_frac"] == 1.0
        assert r["zero_std_frac"] == 1.0 and r["loss"] == 0.0 and r["skipped"] == 0
    assert trainer.sampler.state_dict()["pos"] == 2 * 3 * 2
    assert trainer.scheduler.last_epoch == 2  # the schedule counts the steps


def test_a_stopped_run_with_dynamic_sampling_resumes_into_the_uninterrupted_one(tmp_path):
    overrides = EMBEDDED + ["rollout.dynamic_sampling=true", "train.steps=3", "train.save_every=2",
                            "rollout.max_new_tokens=40"]

    def check(resumed):
        assert resumed.step == 2

    rows = resumed_equals_whole(overrides, tmp_path, die_in=3, check=check)
    assert len(rows) == 4 and any(r["sampling/rounds"] > 1 for r in rows[1:])  # needs the sampler's position saved


def test_token_ends_map_each_character_offset_to_the_token_holding_it():
    from thinkrl.policy import load_tokenizer, resolve_model_path
    from thinkrl.train.grpo_batch import token_ends

    tok = load_tokenizer(resolve_model_path("embedded"))
    text = " <think>7+5=12 4+8+1=13</think> <answer>132</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    decode = lambda x: tok.decode(x, skip_special_tokens=True)  # noqa: E731
    assert decode(ids) == text
    ends = [text.index("=12") + 3, text.index("=13") + 3, len(text)]
    got = token_ends(decode, ids, ends)
    for e, k in zip(ends, got):  # the token k holds character e-1: the prefix up to k reaches e, the one before not
        assert len(decode(ids[:k + 1])) >= e > len(decode(ids[:k]))
    assert got[-1] == len(ids) - 1
    assert token_ends(decode, ids, [len(text) + 5]) == [len(ids) - 1]  # past the end: the last token


def test_dynamic_sampling_and_fsdp_over_processes_is_refused_at_start():
    from thinkrl.checks import ConfigError
    from thinkrl.config import validate_world

    cfg = load_config(None, ["rollout.dynamic_sampling=true", "train.parallel=fsdp"])
    with pytest.raises(ConfigError, match="dynamic_sampling"):
        validate_world(cfg, 2)
    validate_world(load_config(None, ["rollout.dynamic_sampling=true"]), 2)
    with pytest.raises(ConfigError, match="max_sample_rounds"):
        load_config(None, ["rollout.max_sample_rounds=0"])
