"""The sampler's inverse CDF (rollout/hf.py): a token removed by top-k or top-p is never drawn,
whatever the uniform (0 and just below 1 included); a token of probability 1e-9 among 152k
is drawn exactly when the uniform falls in its interval; the draws follow the exact truncated
distribution; one uniform per token, fixed by the seed."""

import pytest
import torch

from thinkrl.rollout import SamplingParams
from thinkrl.rollout.hf import inverse_cdf, sample_tokens, truncated_probs

BELOW_ONE = 1 - 2**-53  # the largest float64 below 1
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # a GPU's cumsum rounds otherwise


def uniforms(*values):
    return torch.tensor([[v] for v in values], dtype=torch.float64)


def test_u_zero_never_draws_a_token_top_k_removed():
    logits = torch.tensor([[0.1, 5.0, 4.0, 0.2]])  # top-k 2 keeps tokens 1 and 2
    probs = truncated_probs(logits, SamplingParams(top_k=2))
    assert probs[0, 0] == 0 and probs[0, 3] == 0
    assert inverse_cdf(probs, uniforms(0.0)).tolist() == [1]
    assert inverse_cdf(probs, uniforms(BELOW_ONE)).tolist() == [2]


@pytest.mark.parametrize("device", DEVICES)
def test_no_uniform_draws_a_removed_token(device):
    logits = torch.log(torch.tensor([[0.02, 0.3, 0.01, 0.4, 0.0001, 0.2, 0.0699]], device=device))
    for params in (SamplingParams(top_k=3), SamplingParams(top_p=0.85), SamplingParams(top_k=4, top_p=0.9)):
        probs = truncated_probs(logits, params)
        kept = set(probs[0].nonzero().flatten().tolist())
        cdf = probs[0].double().cumsum(-1) / probs[0].double().sum()
        # the interval ends themselves, on both sides, and a grid between them
        us = [0.0, BELOW_ONE] + [c for x in cdf.tolist() if x < 1 for c in (x, x * (1 - 2**-52), x * (1 + 2**-52))]
        us += [i / 997 for i in range(997)]
        drawn = inverse_cdf(probs.expand(len(us), -1), uniforms(*us).to(device)).tolist()
        assert set(drawn) == kept, params


@pytest.mark.parametrize("device", DEVICES)
def test_a_token_of_probability_1e9_is_drawn_where_u_falls_in_its_interval(device):
    V = 152_000
    logits = torch.zeros(1, V, device=device)
    logits[0, 0] = 20.7  # e^20.7 ≈ 1e9: every other token has p ≈ 1e-9
    probs = torch.softmax(logits, dim=-1)
    exact = probs[0].double().cpu()
    total = float(exact.sum())
    for t in (1, 60_000, 123_457, V - 1):
        assert 5e-10 < exact[t] < 2e-9
        lo = float(exact[:t].sum())
        mid, near_lo, near_hi = lo + exact[t] / 2, lo + exact[t] * 0.01, lo + exact[t] * 0.99
        u = uniforms(mid / total, near_lo / total, near_hi / total).to(device)
        got = inverse_cdf(probs.expand(3, -1), u).tolist()
        assert got == [t, t, t], t


def exact_truncated(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution a sampler must follow, computed apart in float64: temperature, the
    top_k most likely, then the most likely tokens until top_p is covered, renormalised."""
    p = torch.softmax(logits.double() / params.temperature, dim=-1)
    order = p.argsort(descending=True).tolist()
    keep = order[: params.top_k or len(order)]
    out = torch.zeros_like(p)
    top = p[keep] / p[keep].sum()  # top-p is over the top-k tokens, renormalised
    covered = 0.0
    for i, q in zip(keep, top.tolist()):
        if covered > params.top_p:
            break
        out[i] = q
        covered += q
    return out / out.sum()


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=0.7, top_k=5),
                                    SamplingParams(temperature=1.3, top_p=0.8)])
def test_draws_follow_the_exact_distribution(params):
    logits = torch.tensor([1.5, -0.5, 0.3, 2.0, -3.0, 0.9, 0.0, -1.2])
    n = 60_000
    tok, _ = sample_tokens(logits.expand(n, -1), params, torch.Generator().manual_seed(7))
    freq = torch.bincount(tok, minlength=len(logits)).double()
    p = exact_truncated(logits, params)
    assert (freq[p == 0] == 0).all()
    # each count within 5 standard deviations of its binomial mean (plus one draw)
    assert ((freq - n * p).abs() <= 5 * (n * p * (1 - p)).sqrt() + 1).all(), (freq / n, p)


def test_one_uniform_per_token_and_the_seed_fixes_the_draws():
    logits = torch.randn(32, 50, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=0.8, top_p=0.9)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, _ = sample_tokens(logits, params, g1)
    b, _ = sample_tokens(logits, params, g2)
    assert torch.equal(a, b)
    ref = torch.Generator().manual_seed(3)
    torch.rand(32, 1, generator=ref, dtype=torch.float64)
    assert torch.equal(g1.get_state(), ref.get_state())
