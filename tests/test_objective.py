"""The GRPO loss and its gradients against a plain, loop-by-loop transcription of the formula."""

import math

import pytest
import torch

from thinkrl.objective import Normaliser, group_advantages, grpo_loss, k3_kl


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons in double precision, for this module only."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def reference_advantages(rewards, G, scale_std=True):
    out = []
    for g in range(0, len(rewards), G):
        grp = rewards[g : g + G]
        mean = sum(grp) / G
        std = math.sqrt(sum((r - mean) ** 2 for r in grp) / (G - 1))
        for r in grp:
            if std <= 1e-6:
                out.append(0.0)
            else:
                out.append((r - mean) / std if scale_std else r - mean)
    return out


def reference_loss(logp, old, ref, adv, mask, beta, eps_low, eps_high, agg, max_len=None):
    """docs/ALGORITHM.md's objective token by token with Python scalars (torch ops for autograd)."""
    B, T = logp.shape
    per_seq = []
    total = 0
    n_tokens = 0
    for i in range(B):
        s = 0
        n_i = 0
        for t in range(T):
            if not mask[i, t]:
                continue
            rho = torch.exp(logp[i, t] - old[i, t])
            a = adv[i] if adv.dim() == 1 else adv[i, t]  # outcome: per sequence; process: per token
            term = torch.minimum(rho * a, torch.clamp(rho, 1 - eps_low, 1 + eps_high) * a)
            if beta:
                kl = torch.exp(ref[i, t] - logp[i, t]) - (ref[i, t] - logp[i, t]) - 1
                term = term - beta * kl
            s = s + term
            n_i += 1
        per_seq.append((s, n_i))
        total = total + s
        n_tokens += n_i
    if agg == "grpo":
        J = sum(s / max(n, 1) for s, n in per_seq) / B
    elif agg == "dapo":
        J = total / n_tokens
    else:
        J = total / (B * (max_len or T))
    return -J


def random_case(seed, B=6, T=7, spread=0.5):
    g = torch.Generator().manual_seed(seed)
    logp_base = -torch.rand(B, T, generator=g) * 3
    old = logp_base + spread * torch.randn(B, T, generator=g)
    ref = logp_base + spread * torch.randn(B, T, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    adv = torch.randn(B, generator=g)
    return logp_base, old, ref, adv, mask


@pytest.mark.parametrize("agg", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_loss_and_gradient_match_transcription(agg, beta, eps_high):
    for seed in range(3):
        base, old, ref, adv, mask = random_case(seed)
        a = base.clone().requires_grad_(True)
        b = base.clone().requires_grad_(True)
        loss, _ = grpo_loss(a, old, adv, mask, ref_logp=ref, beta=beta, eps_low=0.2, eps_high=eps_high, aggregation=agg)
        ref_l = reference_loss(b, old, ref, adv, mask, beta, 0.2, 0.2 if eps_high is None else eps_high, agg)
        loss.backward()
        ref_l.backward()
        assert torch.allclose(loss, ref_l, atol=1e-10)
        assert torch.allclose(a.grad, b.grad, atol=1e-10)
        # padding never receives gradient
        assert torch.all(a.grad[~mask] == 0)


def test_ratios_at_both_clip_bounds_stop_the_gradient():
    # token 0: ratio above 1+eps with A>0 -> clipped, no gradient
    # token 1: ratio below 1-eps with A<0 -> clipped, no gradient
    # token 2: ratio above 1+eps with A<0 -> min picks the unclipped term, gradient flows
    logp = torch.zeros(3, 1, requires_grad=True)
    old = torch.log(torch.tensor([[1 / 1.5], [1 / 0.5], [1 / 1.5]]))
    adv = torch.tensor([1.0, -1.0, -1.0])
    mask = torch.ones(3, 1, dtype=torch.bool)
    loss, stats = grpo_loss(logp, old, adv, mask, eps_low=0.2, aggregation="dapo")
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[1, 0] == 0
    assert logp.grad[2, 0] != 0
    assert stats["clip_frac"] == pytest.approx(2 / 3)


def test_clip_higher_widens_only_the_upper_bound():
    logp = torch.zeros(1, 1, requires_grad=True)
    old = torch.log(torch.tensor([[1 / 1.25]]))  # ratio 1.25: clipped at eps 0.2, free at eps_high 0.28
    adv = torch.tensor([1.0])
    mask = torch.ones(1, 1, dtype=torch.bool)
    l_sym, _ = grpo_loss(logp, old, adv, mask, eps_low=0.2)
    l_sym.backward()
    assert logp.grad.item() == 0
    logp.grad = None
    l_hi, _ = grpo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    l_hi.backward()
    assert logp.grad.item() == pytest.approx(-1.25)
    assert l_hi.item() == pytest.approx(-1.25)


def test_mu_one_has_unit_ratio_and_policy_gradient():
    base, _, _, adv, mask = random_case(7)
    a = base.clone().requires_grad_(True)
    loss, stats = grpo_loss(a, None, adv, mask, aggregation="grpo")
    loss.backward()
    assert stats["ratio"] == pytest.approx(1.0)
    lengths = mask.sum(-1, keepdim=True)
    expected = -(adv[:, None] / lengths) * mask / mask.shape[0]
    assert torch.allclose(a.grad, expected)


def test_k3_kl_is_nonnegative_and_zero_at_equality():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3
    kl = k3_kl(x, y)
    assert torch.all(kl >= 0)
    assert torch.allclose(k3_kl(x, x), torch.zeros_like(x))
    # E_{π_θ}[k3] equals KL(π_θ || π_ref) for categorical distributions
    p = torch.softmax(torch.randn(5, generator=g), 0)
    q = torch.softmax(torch.randn(5, generator=g), 0)
    expected = (p * (p.log() - q.log())).sum()
    assert torch.allclose((p * k3_kl(p.log(), q.log())).sum(), expected)


def test_advantages_match_transcription_and_zero_std_groups_get_zero():
    rewards = [1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.5, 0.0, 1.5, 1.0]
    adv, zero = group_advantages(torch.tensor(rewards), 4)
    assert torch.allclose(adv, torch.tensor(reference_advantages(rewards, 4)))
    assert zero.tolist() == [False, True, False]
    assert torch.all(adv[4:8] == 0) and torch.isfinite(adv).all()
    adv_dr, _ = group_advantages(torch.tensor(rewards), 4, scale_std=False)
    assert torch.allclose(adv_dr, torch.tensor(reference_advantages(rewards, 4, scale_std=False)))


def test_advantages_reject_ragged_groups():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)


@pytest.mark.parametrize("agg", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_with_batch_normaliser_equal_whole_batch(agg):
    base, old, ref, adv, mask = random_case(3, B=8, T=9)
    whole = base.clone().requires_grad_(True)
    loss, _ = grpo_loss(whole, old, adv, mask, ref_logp=ref, beta=0.1, aggregation=agg)
    loss.backward()
    parts = base.clone().requires_grad_(True)
    norm = Normaliser.of(mask)
    total = 0
    for s in (slice(0, 3), slice(3, 8)):
        l, _ = grpo_loss(parts[s], old[s], adv[s], mask[s], ref_logp=ref[s], beta=0.1, aggregation=agg, norm=norm)
        l.backward()
        total += l.item()
    assert total == pytest.approx(loss.item(), abs=1e-12)
    assert torch.allclose(parts.grad, whole.grad, atol=1e-12)


def test_sequence_ratio_uses_one_ratio_per_sequence():
    base, old, _, adv, mask = random_case(11)
    a = base.clone().requires_grad_(True)
    loss, _ = grpo_loss(a, old, adv, mask, aggregation="grpo", sequence_ratio=True, eps_low=10.0)
    # with a huge clip range nothing is clipped: loss = -mean_i A_i exp(mean_t log ρ_it)
    m = mask.to(base.dtype)
    seq = ((base - old) * m).sum(-1) / m.sum(-1)
    assert loss.item() == pytest.approx(-(adv * torch.exp(seq)).mean().item())


def test_unknown_aggregation_is_refused():
    base, old, _, adv, mask = random_case(0)
    with pytest.raises(ValueError, match="dapo"):
        grpo_loss(base, old, adv, mask, aggregation="token_mean")
