"""Asynchronous rollouts (rollout.async_steps = k): step t learns from samples drawn by policy
version t - k, each token corrected by the truncated importance weight min(π_old/π_behaviour, C)."""

import pytest
import torch

from tests.test_objective import random_case, reference_loss
from tests.test_trainer import resumed_equals_whole
from thinkrl.config import load_config
from thinkrl.metrics import read_metrics
from thinkrl.objective import grpo_loss
from thinkrl.train.grpo import GRPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["data.eval=none", "eval.every=0", "train.save_every=0", "run.progress=false", "train.prompts_per_step=4",
        "rollout.group_size=4", "rollout.max_new_tokens=40", "train.micro_batch_size=16", "optim.lr=1e-4"]


@pytest.mark.parametrize("agg", ["grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_the_truncated_importance_weight_matches_the_transcription(agg, beta):
    torch.set_default_dtype(torch.float64)  # exact comparisons (the autouse fixture gives the default back)
    for seed in range(3):
        base, old, ref, adv, mask = random_case(seed, spread=0.8)
        behaviour = old + 0.8 * torch.randn(old.shape, generator=torch.Generator().manual_seed(seed))
        a = base.clone().requires_grad_(True)
        loss, st = grpo_loss(a, old, adv, mask, ref_logp=ref, beta=beta, aggregation=agg,
                             behaviour_logp=behaviour, tis_cap=1.5)
        loss.backward()
        # the transcription: the clipped term of token t times min(π_old/π_behaviour, C), the KL term as it is
        b = base.clone().requires_grad_(True)
        w = torch.exp(old - behaviour).clamp(max=1.5)
        clipped_part = reference_loss(b, old, ref, adv[:, None] * w, mask, 0.0, 0.2, 0.2, agg)
        kl_part = reference_loss(b, old, ref, torch.zeros_like(adv), mask, beta, 0.2, 0.2, agg) if beta else 0.0
        ref_l = clipped_part + kl_part
        ref_l.backward()
        assert torch.allclose(loss, ref_l, atol=1e-10) and torch.allclose(a.grad, b.grad, atol=1e-10)
        assert st["tis_weight"] == pytest.approx(float((w * mask).sum() / mask.sum()))
        assert st["tis_capped_frac"] > 0 and st["tis_weight_max"] > 1.5  # the cap was reached, the raw max reported


def test_the_asynchronous_path_at_k_0_draws_and_learns_what_the_synchronous_one_does(tmp_path):
    sync = GRPOTrainer(load_config(None, BASE), tmp_path / "sync")
    asyn = GRPOTrainer(load_config(None, BASE), tmp_path / "async")
    for _ in range(2):
        a, b = sync.collect(), asyn.collect_async()  # k = 0: submitted and taken in the same step
        assert a.drawn.completion_ids == b.drawn.completion_ids and torch.equal(a.advantages, b.advantages)
        assert b.staleness == 0 and b.behaviour_logprobs == b.drawn.logprobs
        sa = sync.update(a.prompt_ids, a.completion_ids, a.advantages, group_ids=a.group_ids)
        sb = asyn.update(b.prompt_ids, b.completion_ids, b.advantages, group_ids=b.group_ids,
                         behaviour=b.behaviour_logprobs)
        assert sb["tis_weight"] == pytest.approx(1.0, abs=1e-4)  # the sampler's log-probs are the trainer's
        assert sa["loss"] == pytest.approx(sb["loss"], rel=1e-4, abs=1e-6)
        sync.step += 1
        asyn.step += 1
    for (k, v), w in zip(sync.policy.state_dict().items(), asyn.policy.state_dict().values()):
        assert torch.allclose(v, w, atol=1e-6), k


def test_k_1_learns_from_samples_one_version_old(tmp_path):
    trainer = GRPOTrainer(load_config(None, BASE + ["train.steps=3", "rollout.async_steps=1"]), tmp_path / "async")
    trainer.run()
    rows = read_metrics(tmp_path / "async")[1:]
    assert [r["async/staleness"] for r in rows] == [0, 1, 1]
    assert all(0 < r["async/tis_weight"] <= 2.0 and r["async/tis_weight_max"] > 0 for r in rows)
    assert trainer.sampler.state_dict()["pos"] == 4 * 4  # one step's questions in flight beyond the 3 learned
    assert len(trainer.in_flight) == 1
    assert all("timing/sync" in r for r in rows)


def test_a_stopped_asynchronous_run_resumes_into_the_uninterrupted_one(tmp_path):
    def check(resumed):
        assert resumed.step == 2 and len(resumed.in_flight) == 1  # the generation in flight came back with it

    rows = resumed_equals_whole(BASE + ["train.steps=3", "train.save_every=2", "rollout.async_steps=1"], tmp_path,
                                die_in=3, check=check)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
