"""Numerical edge cases (issue 15, step 6): junk at padded positions never reaches the loss,
dropout never makes π_θ differ from itself, a token the teacher forbids gives a finite
reverse KL, GSPO's clip range is flagged, and the learning-rate schedule counts every step
the run meant to take, whatever the reason one was skipped."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.conftest import make_tokenizer
from tests.test_trainer import random_model_overrides, small_dataset
from thinkrl.config import load_config
from thinkrl.distill.onpolicy import reverse_kl_per_token
from thinkrl.objective import Normaliser, grpo_loss
from thinkrl.policy import SequenceBatch, completion_logprobs, load_model


# ---------------------------------------------------------------- 1. the k3 KL at padding


def _padded_batch(junk: float):
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    logp = -torch.rand(3, 5, generator=g, dtype=torch.float64) - 0.1
    old = logp + 0.05 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    pad = ~mask
    # the padded positions hold whatever the forward left there: here `junk`
    logp = torch.where(pad, torch.full_like(logp, junk), logp)
    old = torch.where(pad, torch.full_like(old, -junk), old)
    ref = torch.where(pad, torch.full_like(ref, float("-inf") if junk else 0.0), ref)
    return logp.requires_grad_(True), old, ref, mask


@pytest.mark.parametrize("agg", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("sequence_ratio", [False, True])
def test_padding_values_never_reach_the_kl_loss_or_its_gradient(agg, sequence_ratio):
    adv = torch.tensor([1.0, -0.5, 0.7], dtype=torch.float64)
    results = []
    for junk in (0.0, 1e4):  # benign padding, then overflowing exp() (and −inf reference log-probs)
        logp, old, ref, mask = _padded_batch(junk)
        loss, stats = grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=0.04, aggregation=agg,
                                norm=Normaliser.of(mask), sequence_ratio=sequence_ratio)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logp.grad).all(), (junk, loss, logp.grad)
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
        results.append((loss.detach(), logp.grad.clone(), stats))
    (l0, g0, s0), (l1, g1, s1) = results
    assert torch.equal(l0, l1) and torch.equal(g0, g1)
    assert s0 == s1
    assert (g1[~mask] == 0).all()


# ---------------------------------------------------------------- 2. dropout off at load


def _dropout_model_dir(path, arch: str):
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(0)
    if arch == "gpt2":  # GPT-2 ships with 0.1 dropout on embeddings, attention and residuals
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                           eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                                           pad_token_id=tok.pad_token_id))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=256, attention_dropout=0.3,
                                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                             attn_implementation="eager"))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_a_loaded_policy_gives_the_same_logprobs_in_train_mode_whatever_its_dropout(tmp_path, arch):
    path = _dropout_model_dir(tmp_path / arch, arch)
    model = load_model(path, torch.device("cpu"))
    model.train()  # as the trainer, SFT and on-policy distillation hold it
    tok = make_tokenizer()
    prompts = [tok("What is 347+85?")["input_ids"], tok("<think> 7+5=12")["input_ids"]]
    completions = [tok(" <answer> 432 </answer>")["input_ids"], tok(" wait check")["input_ids"]]
    batch = SequenceBatch.build(prompts, completions, tok.pad_token_id, torch.device("cpu"))
    torch.manual_seed(1)
    a = completion_logprobs(model, batch)
    torch.manual_seed(2)
    b = completion_logprobs(model, batch)
    assert torch.equal(a[batch.completion_mask], b[batch.completion_mask])  # ratio 1, KL 0 at the start
    assert not any(v for k, v in model.config.to_dict().items() if "drop" in k and isinstance(v, float))


def test_a_reward_model_trains_without_dropout(tmp_path, monkeypatch):
    import thinkrl.train.reward_model as rm

    path, models = _dropout_model_dir(tmp_path / "qwen2", "qwen2"), []
    real = rm.load_reward_backbone
    monkeypatch.setattr(rm, "load_reward_backbone", lambda *a, **k: models.append(real(*a, **k)) or models[-1])
    args = ["model.template=none", f"model.path={path}", "train.steps=1", "train.batch_size=8", "run.progress=false",
            "data.synthetic_train=16", "data.synthetic_test=8", "run.threads=1"]
    rm.train_reward_model(rm.load_rm_config(None, args), tmp_path / "rm")
    model = models[0].train()  # the model the pairs were scored with, in the mode they were
    ids = torch.tensor([[5, 9, 12, 7, 3, 8]])
    torch.manual_seed(1)
    a = model(input_ids=ids).logits
    torch.manual_seed(2)
    assert torch.equal(a, model(input_ids=ids).logits)  # chosen and rejected scored by one function


# ---------------------------------------------------------------- 3. a teacher that forbids a token


def test_a_token_the_teacher_forbids_gives_a_finite_reverse_kl_and_gradient():
    inf = float("-inf")
    s = torch.tensor([[[0.3, -0.2, 0.1, -40.0], [0.0, 0.5, -0.5, inf]]], requires_grad=True)
    t = torch.tensor([[[0.1, 0.2, -0.3, inf], [0.2, -0.1, 0.4, inf]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    kl = reverse_kl_per_token(s, t, mask)
    kl.sum().backward()
    assert torch.isfinite(kl).all() and torch.isfinite(s.grad).all(), (kl, s.grad)
    # the forbidden token's student mass is ~0 (e^-40) or 0: the KL is that over the other tokens
    want = reverse_kl_per_token(s.detach()[..., :3], t[..., :3], mask)
    assert torch.allclose(kl.detach(), want, atol=1e-6)
    # where the student does put mass on the forbidden token the penalty is large but finite
    s3 = torch.zeros(1, 1, 4, requires_grad=True)
    kl3 = reverse_kl_per_token(s3, t[:, :1], mask[:, :1])
    kl3.sum().backward()
    assert torch.isfinite(kl3).all() and kl3.item() > 10 and torch.isfinite(s3.grad).all()
    assert s3.grad[0, 0, 3] > 0  # the gradient pushes the student off the forbidden token


# ---------------------------------------------------------------- 4. GSPO's clip range


def test_gspo_with_the_grpo_clip_range_is_warned_about_naming_the_papers_settings(caplog):
    with caplog.at_level(logging.WARNING):
        load_config(None, ["objective.sequence_ratio=true"])
    text = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "2507.18071" in text and "3e-4" in text and "4e-4" in text, text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_config(None, ["objective.sequence_ratio=true", "objective.eps_low=3e-4", "objective.eps_high=4e-4"])
        load_config(None, [])  # GRPO (no sequence ratio): nothing to say
    assert not [r for r in caplog.records if "2507.18071" in r.getMessage()]
    with caplog.at_level(logging.WARNING):  # the paper's ε but a token-level aggregation
        load_config(None, ["objective.sequence_ratio=true", "objective.eps_low=3e-4", "objective.eps_high=4e-4",
                           "objective.loss_agg=dapo"])
    assert [r for r in caplog.records if "2507.18071" in r.getMessage() and "dapo" in r.getMessage()]


# ---------------------------------------------------------------- 5. the schedule counts every step

CALLS = [0]


def zero_then_nan_reward(completions, **kwargs):
    """Step 1: every sample scores 0 (nothing to learn); step 3: NaN (the step is skipped);
    otherwise half of each group scores 1."""
    CALLS[0] += 1
    if CALLS[0] in (1, 3):
        return [0.0 if CALLS[0] == 1 else float("nan")] * len(completions)
    return [float(i % 2) for i in range(len(completions))]  # something to learn in every group


def test_the_schedule_advances_mu_per_step_however_the_step_was_skipped(tmp_path, qwen2_dir, monkeypatch):
    import thinkrl.train.grpo_batch as tr
    from thinkrl.train.grpo import GRPOTrainer

    real = tr.group_advantages
    calls = [0]

    def advantages(rewards, G, scale):  # step 2: advantages that make the loss inf (a skipped update)
        calls[0] += 1
        adv, zero = real(rewards, G, scale)
        return (torch.full_like(adv, float("inf")), zero) if calls[0] == 2 else (adv, zero)

    monkeypatch.setattr(tr, "group_advantages", advantages)
    CALLS[0] = 0
    mu, steps = 2, 4
    overrides = random_model_overrides(qwen2_dir, small_dataset(tmp_path), **{
        "train.steps": steps, "objective.mu": mu, "train.save_every": 0, "eval.every": 0, "data.eval": "none",
        "rewards.weights": "{'tests.test_numerics:zero_then_nan_reward': 1}", "rewards.isolate": "false",
        "train.max_bad_steps": 5, "optim.warmup_steps": 3, "optim.schedule": "linear"})
    trainer = GRPOTrainer(load_config(None, overrides), tmp_path / "run")
    trainer.run()
    assert trainer.step == steps and CALLS[0] == steps
    assert trainer.scheduler.last_epoch == steps * mu
