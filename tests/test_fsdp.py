"""Sharded data parallelism (train.parallel=fsdp, FSDP2 over gloo): two processes give the loss
and gradients of one process; a sharded run's checkpoint (the model whole, the optimizer state
in shards) resumes with another number of processes, 2 -> 1 and 1 -> 2, holding exactly the
weights and optimizer state that were saved.

This module is also the worker the tests launch: `torchrun ... -m tests.test_fsdp`.
"""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.test_distributed import fixed_groups, torchrun
from tests.test_trainer import random_model_overrides, small_dataset
from thinkrl import distributed, sharding
from thinkrl.checkpoint import read_weights
from thinkrl.config import load_config
from thinkrl.train.grpo import GRPOTrainer

G = 4
CASES = {  # name: config overrides of the update
    "grpo": {"objective.loss_agg": "grpo"},
    "dapo_beta_mu2": {"objective.loss_agg": "dapo", "objective.beta": 0.04, "objective.mu": 2},
    "dr_grpo_idle_rank": {"objective.loss_agg": "dr_grpo"},  # the second process's advantages are all 0
    "grpo_checkpointing": {"objective.loss_agg": "grpo", "train.gradient_checkpointing": True},
}
RUN = {"train.prompts_per_step": 2, "train.micro_batch_size": 4, "train.save_every": 2, "eval.every": 0,
       "data.eval": "none", "optim.lr": 1e-3, "objective.beta": 0.04, "train.parallel": "fsdp",
       "objective.ref_reset_every": 1,  # the reference is reset, saved whole and loaded into shards too
       "rewards.weights": "{'tests.test_distributed:length_reward': 1.0}"}  # uneven rewards: something to learn


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def run_update(model_dir, data, run_dir, case: str) -> dict:
    """The trainer's update on this process's share of a fixed batch: the loss, statistics, the
    whole gradient of every parameter and the weights after the optimizer step."""
    overrides = random_model_overrides(model_dir, data, **CASES[case], **{
        "train.micro_batch_size": 4, "train.prompts_per_step": 4, "rollout.group_size": G, "data.eval": "none",
        "optim.max_grad_norm": 0, "train.parallel": "fsdp"})
    trainer = GRPOTrainer(load_config(None, overrides), run_dir)
    assert trainer.sharded == (distributed.world_size() > 1)
    mine = distributed.shard(fixed_groups(trainer.policy.config.vocab_size, case.endswith("idle_rank")))
    stats = trainer.update([p for p, cs, _ in mine for _ in cs], [c for _, cs, _ in mine for c in cs],
                           torch.cat([a for _, _, a in mine]))
    return {**{k: stats[k] for k in ("loss", "kl", "clip_frac", "grad_norm")},
            "grads": {n: full(p.grad) for n, p in trainer.policy.named_parameters() if p.grad is not None},
            "weights": {n: full(p) for n, p in trainer.policy.named_parameters()},
            "local_numel": sum(sharding.local(p).numel() for p in trainer.policy.parameters()),
            "numel": sum(p.numel() for p in trainer.policy.parameters())}


def optimizer_state(trainer) -> dict:
    """The whole optimizer state keyed by parameter name (every process must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_optimizer_state_dict(trainer.policy, trainer.optimizer, options=opts).get("state", {})  # rank 0's
    return copy.deepcopy(state)  # one process: the live tensors, which the run goes on to change


def resume(model_dir, data, run_dir, steps: int) -> dict:
    """Resume a sharded run's checkpoint in this many processes: what it loaded, then run on."""
    trainer = GRPOTrainer(load_config(None, random_model_overrides(model_dir, data, **RUN, **{
        "train.steps": steps})), run_dir, resume=True)
    loaded = {"step": trainer.step, "optimizer": optimizer_state(trainer),
              "weights": {n: full(p) for n, p in trainer.policy.named_parameters()},
              "ref": {n: full(p) for n, p in trainer.ref.named_parameters()}}
    summary = trainer.run()
    return {"loaded": loaded, "summary": summary}


def saved_state(ckpt: Path) -> tuple[dict, dict]:
    """A checkpoint's optimizer state (from its shards) and weights, read without any process group."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(ckpt / "optimizer", ckpt.parent / "optim.pt")
    optim = torch.load(ckpt.parent / "optim.pt", weights_only=False)["optimizer"]["state"]
    return optim, read_weights(ckpt)


def assert_loaded(loaded: dict, ckpt: Path) -> None:
    optim, weights = saved_state(ckpt)
    assert loaded["step"] == int(ckpt.name.split("_")[1])
    assert optim.keys() == loaded["optimizer"].keys() and optim
    for name, state in optim.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(loaded["optimizer"][name][key]), torch.as_tensor(state[key])), (name, key)
    assert any(float(s["exp_avg"].abs().sum()) > 0 for s in optim.values())  # a state worth comparing
    for name, w in loaded["weights"].items():
        assert torch.equal(w, weights[name]), name
        assert torch.equal(loaded["ref"][name], weights[name]), name  # π_ref ← π_θ at every step, then saved


@pytest.fixture(scope="module")
def runs(tmp_path_factory, qwen2_dir):
    """One process: the update cases, and a 2-step sharded-format run; then two processes (one
    torchrun): the update cases, a 2-step run, and the resume of the one-process run."""
    tmp = tmp_path_factory.mktemp("fsdp")
    data = small_dataset(tmp)
    whole = {case: run_update(qwen2_dir, data, tmp / "whole" / case, case) for case in CASES}
    one = tmp / "one"
    GRPOTrainer(load_config(None, random_model_overrides(qwen2_dir, data, **RUN, **{"train.steps": 2})), one).run()
    shutil.copytree(one, tmp / "one_to_two")
    torchrun("-m", "tests.test_fsdp", qwen2_dir, data, tmp, timeout=400)
    return {"tmp": tmp, "data": data, "whole": whole, "split": torch.load(tmp / "split.pt", weights_only=False),
            "one_to_two": torch.load(tmp / "one_to_two.pt", weights_only=False)}


@pytest.mark.parametrize("case", list(CASES))
def test_two_sharded_processes_give_the_loss_and_gradients_of_one(runs, case):
    whole, split = runs["whole"][case], runs["split"][case]
    assert whole["loss"] != 0 and whole["grads"]
    assert split["local_numel"] < 0.6 * split["numel"]  # each process holds about half of every parameter
    for k in ("loss", "kl", "clip_frac", "grad_norm"):
        assert split[k] == pytest.approx(whole[k], abs=1e-5), k
    assert split["grads"].keys() == whole["grads"].keys()
    for name, grad in whole["grads"].items():
        assert torch.allclose(split["grads"][name], grad, atol=1e-5, rtol=0), name
    for name, w in whole["weights"].items():  # and the optimizer step on the shards is the whole one
        assert torch.allclose(split["weights"][name], w, atol=1e-6, rtol=0), name


def test_a_two_process_checkpoint_resumes_in_one_process(runs, qwen2_dir):
    two = runs["tmp"] / "two"
    ckpt = two / "checkpoints" / "step_000002"
    assert (ckpt / "optimizer").is_dir() and (ckpt / "model.safetensors").is_file()
    assert sorted(p.name for p in (ckpt / "optimizer").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    from thinkrl.checkpoint import verify

    assert verify(ckpt)  # the manifest covers the shards
    from thinkrl.metrics import read_metrics

    assert [r["eval/accuracy"] is not None for r in read_metrics(two)] == [True, True, True]  # steps 0, 1, 2
    out = resume(qwen2_dir, runs["data"], two, steps=3)
    assert_loaded(out["loaded"], ckpt)
    assert out["summary"]["steps"] == 3 and out["summary"]["error"] is None


def test_a_one_process_checkpoint_resumes_in_two_processes(runs):
    out = runs["one_to_two"]
    assert_loaded(out["loaded"], runs["tmp"] / "one" / "checkpoints" / "step_000002")
    assert out["summary"]["steps"] == 3 and out["summary"]["error"] is None
    assert len(set(out["summary"]["weights_sha256_by_rank"])) == 1


def test_a_sharded_checkpoint_is_not_resumed_as_ddp(runs, qwen2_dir):
    from thinkrl.train.context import ResumeError

    with pytest.raises(ResumeError, match="train.parallel=fsdp"):
        GRPOTrainer(load_config(None, random_model_overrides(qwen2_dir, runs["data"], **{
            **RUN, "train.parallel": "ddp"})), runs["tmp"] / "one", resume=True)


def worker(model_dir: str, data: str, tmp: str) -> None:
    tmp = Path(tmp)
    split = {case: run_update(model_dir, data, tmp / "split" / case, case) for case in CASES}
    evaluated = {"data.eval": data, "data.eval_size": 4, "eval.every": 1}  # rank 0 samples from the gathered model
    GRPOTrainer(load_config(None, random_model_overrides(model_dir, data, **{**RUN, **evaluated, "train.steps": 2})),
                tmp / "two").run()
    one_to_two = resume(model_dir, data, tmp / "one_to_two", steps=3)
    if distributed.is_main():
        torch.save(split, tmp / "split.pt")
        torch.save(one_to_two, tmp / "one_to_two.pt")
    distributed.shutdown()


if __name__ == "__main__":  # a worker under torchrun
    worker(*sys.argv[1:4])
