"""Data parallel (torchrun, gloo on CPU): one batch gives the same loss and gradients whole in
one process, in micro-batches, or split over two processes; a two-process training run ends
with the same weights on both processes and in its checkpoint, and resumes every process's
sampling stream.

This module is also the worker the tests launch: `torchrun ... -m tests.test_distributed`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_trainer import ROOT, drop_timing, random_model_overrides, small_dataset
from thinkrl import distributed
from thinkrl.config import ConfigError, load_config, validate_world
from thinkrl.metrics import read_metrics
from thinkrl.train.grpo import GRPOTrainer

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT), "OMP_NUM_THREADS": "1"}
G = 4
CASES = {  # name: config overrides of the update
    "grpo": {"objective.loss_agg": "grpo"},
    "dapo": {"objective.loss_agg": "dapo"},
    "grpo_beta": {"objective.loss_agg": "grpo", "objective.beta": 0.04},
    "dapo_beta_mu2": {"objective.loss_agg": "dapo", "objective.beta": 0.04, "objective.mu": 2},
    "dapo_idle_rank": {"objective.loss_agg": "dapo"},  # the second process keeps no sample (β = 0)
}


def length_reward(completions, **kwargs):
    """A reward the random model's completions earn unevenly, so that it learns something."""
    return [float(len(c) % 3) for c in completions]


def rank_reward(completions, **kwargs):
    """The rank of the process that sampled them: its mean over the whole batch is 0.5."""
    return [float(os.environ["RANK"])] * len(completions)


def fixed_groups(vocab: int, idle_rank: bool = False) -> list[tuple[list[int], list[list[int]], torch.Tensor]]:
    """Four questions × G completions of fixed token ids and advantages: (prompt, completions,
    advantages) per group. Group 2's advantages are 0 (left out of the backward when β = 0);
    in the idle-rank case so are groups 1 and 3, the second process's share."""
    g = torch.Generator().manual_seed(0)

    def ids(lo, hi):
        return torch.randint(3, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    groups = []
    for q in range(4):
        prompt, completions, adv = ids(3, 9), [ids(1, 9) for _ in range(G)], torch.randn(G, generator=g)
        if q == 2 or (idle_rank and q % 2):
            adv = torch.zeros(G)
        groups.append((prompt, completions, adv))
    return groups


def run_update(model_dir, data, run_dir, case: str, micro: int) -> dict:
    """The trainer's own update on this process's share of the fixed batch (all of it on one
    process); returns the loss, statistics and every parameter's gradient afterwards."""
    overrides = random_model_overrides(model_dir, data, **CASES[case], **{
        "train.micro_batch_size": micro, "train.prompts_per_step": 4, "rollout.group_size": G, "data.eval": "none",
        "optim.max_grad_norm": 0})  # no clipping: the gradients compared are the loss's
    trainer = GRPOTrainer(load_config(None, overrides), run_dir)
    if trainer.ref is not None:  # a reference unlike the policy, so that the KL term has a gradient
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in trainer.ref.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    mine = distributed.shard(fixed_groups(trainer.policy.config.vocab_size, case == "dapo_idle_rank"))
    stats = trainer.update([p for p, cs, _ in mine for _ in cs], [c for _, cs, _ in mine for c in cs],
                           torch.cat([a for _, _, a in mine]))
    return {**{k: stats[k] for k in ("loss", "kl", "clip_frac", "grad_norm")},
            "grads": {n: p.grad.clone() for n, p in trainer.policy.named_parameters() if p.grad is not None},
            "weights": distributed.weights_checksum(trainer.policy)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, timeout=240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), *map(str, args)]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


# ---------------------------------------------------------------- the update: whole = micro-batched = split


@pytest.fixture(scope="module")
def updates(tmp_path_factory, qwen2_dir):
    tmp = tmp_path_factory.mktemp("dp_update")
    data = small_dataset(tmp)
    torchrun("-m", "tests.test_distributed", "update", qwen2_dir, data, tmp / "split")
    split = [torch.load(tmp / "split" / f"rank{r}.pt") for r in (0, 1)]
    return {case: {"whole": run_update(qwen2_dir, data, tmp / "whole" / case, case, micro=16),
                   "micro": run_update(qwen2_dir, data, tmp / "micro" / case, case, micro=2),
                   "split": split[0][case], "split_rank1": split[1][case]} for case in CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradients_are_the_same_whole_micro_batched_or_split_over_processes(updates, case):
    runs = updates[case]
    whole = runs["whole"]
    assert whole["loss"] != 0 and whole["grads"]  # there is something to compare
    for how in ("micro", "split"):
        other = runs[how]
        for k in ("loss", "kl", "clip_frac", "grad_norm"):
            assert other[k] == pytest.approx(whole[k], abs=1e-5), (how, k)
        assert other["grads"].keys() == whole["grads"].keys(), how
        for name, grad in whole["grads"].items():
            assert torch.allclose(other["grads"][name], grad, atol=1e-5, rtol=0), (how, name)
    # both processes hold the same gradient and, after the optimizer step, the same weights
    r0, r1 = runs["split"], runs["split_rank1"]
    assert r0["loss"] == r1["loss"] and r0["weights"] == r1["weights"]
    assert all(torch.equal(r0["grads"][n], r1["grads"][n]) for n in r0["grads"])


def update_worker(model_dir: str, data: str, out: str) -> None:
    out = Path(out)
    results = {case: run_update(model_dir, data, out / case, case, micro=16) for case in CASES}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(results, out / f"rank{distributed.rank()}.pt")
    distributed.shutdown()


# ---------------------------------------------------------------- a real two-process run


def test_two_process_run_agrees_across_processes_and_resumes_each_stream(tmp_path, qwen2_dir):
    data = small_dataset(tmp_path)
    (tmp_path / "none.yaml").write_text("{}\n")
    overrides = random_model_overrides(qwen2_dir, data, **{
        "train.prompts_per_step": 4, "train.micro_batch_size": 4, "train.steps": 4, "train.save_every": 2,
        "eval.every": 2, "objective.beta": 0.04, "optim.lr": 1e-3,
        "rewards.weights": "{'tests.test_distributed:length_reward': 1.0, 'tests.test_distributed:rank_reward': 1.0}"})
    whole = tmp_path / "whole"
    res = torchrun("-m", "thinkrl.cli", "train", "--config", tmp_path / "none.yaml", "--out", whole, *overrides)
    assert res.stdout.count("thinkrl: done, step 4") == 1  # rank 0 alone prints
    rows = read_metrics(whole)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(r["loss"] != 0 for r in rows[1:]) and rows[4]["eval/accuracy"] is not None
    assert all(r["rewards/tests.test_distributed:rank_reward"] == 0.5 for r in rows[1:])  # both processes' samples
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["world_size"] == 2 and summary["error"] is None
    final = Path(summary["final_checkpoint"])
    assert final.name == "step_000004" and (whole / "report.html").exists()
    # both processes end with the weights of the checkpoint, which training changed
    from transformers import AutoModelForCausalLM

    sums = summary["weights_sha256_by_rank"]
    assert len(sums) == 2 and sums[0] == sums[1] == distributed.weights_checksum(AutoModelForCausalLM.from_pretrained(final))
    assert sums[0] != distributed.weights_checksum(AutoModelForCausalLM.from_pretrained(qwen2_dir))
    state = torch.load(final / "trainer_state.pt", weights_only=False)
    gens = [s["generator"] for s in state["ranks"]]
    assert len(gens) == 2 and not torch.equal(gens[0], gens[1]) and torch.equal(gens[0], state["generator"])

    # killed after step 3: --resume from step 2 continues both processes' streams into the same run
    part = tmp_path / "part"
    shutil.copytree(whole, part)
    shutil.rmtree(part / "checkpoints" / "step_000004")
    (part / "summary.json").unlink()
    res = torchrun("-m", "thinkrl.cli", "train", "--config", tmp_path / "none.yaml", "--out", part, "--resume",
                   *overrides)
    assert "resuming from" in res.stdout and "step_000002" in res.stdout
    a, b = drop_timing(read_metrics(whole)), drop_timing(read_metrics(part))
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], abs=1e-6), (ra["step"], k)
    assert json.loads((part / "summary.json").read_text())["weights_sha256_by_rank"] == sums


def test_the_batch_must_split_over_the_processes(tmp_path, qwen2_dir):
    cfg = load_config(None, random_model_overrides(qwen2_dir, small_dataset(tmp_path), **{
        "train.prompts_per_step": 4, "train.micro_batch_size": 4}))
    validate_world(cfg, 2)
    with pytest.raises(ConfigError, match=r"prompts_per_step=4 does not split over the 3 processes.*"
                                          r"prompts_per_step=6"):
        validate_world(cfg, 3)
    cfg.train.micro_batch_size = 16  # 4 questions × G 4 = 16, 8 per process of 2: fine
    validate_world(cfg, 2)
    cfg.train.prompts_per_step = 12  # 48 completions: micro-batches of 16 divide them, not 24 per process
    validate_world(cfg, 1)
    with pytest.raises(ConfigError, match="micro_batch_size=16 does not divide the 24 completions per process"):
        validate_world(cfg, 2)


if __name__ == "__main__":  # a worker under torchrun
    if sys.argv[1] == "update":
        update_worker(*sys.argv[2:5])
