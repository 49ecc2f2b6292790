"""Process-supervised advantages (DeepSeekMath §4.1.3) against a direct transcription of the
formula, token by token, and the loss with per-token advantages against the same transcription
of the objective."""

import math

import pytest
import torch

from tests.test_objective import float64, random_case, reference_loss  # noqa: F401  (float64: autouse)
from thinkrl.objective import grpo_loss, process_advantages


def transcription(steps, G, lengths, outcome=None):
    """r~ = (r - mean(R)) / std(R) over every step of the group; A_t = Σ_{index(j) >= t} r~_j,
    where a completion's last step runs to its end and the outcome joins the last step."""
    steps = [list(s) for s in steps]
    if outcome is not None:
        steps = [s[:-1] + [(s[-1][0], s[-1][1] + o)] if s else [(n - 1, o)] for s, n, o in zip(steps, lengths, outcome)]
    out = []
    for g in range(0, len(steps), G):
        R = [r for s in steps[g:g + G] for _, r in s]
        mean = sum(R) / len(R) if R else 0.0
        std = math.sqrt(sum((r - mean) ** 2 for r in R) / (len(R) - 1)) if len(R) > 1 else 0.0
        for s, n in zip(steps[g:g + G], lengths[g:g + G]):
            index = [e for e, _ in s[:-1]] + [n - 1] if s else []
            row = []
            for t in range(n):
                row.append(0.0 if std <= 1e-6 else
                           sum((r - mean) / std for (_, r), end in zip(s, index) if end >= t))
            out.append(row)
    return out


def as_lists(adv, lengths):
    return [adv[i, :n].tolist() for i, n in enumerate(lengths)]


def test_hand_made_groups_of_unequal_steps_match_the_transcription():
    # group 1: three completions with 3, 1 and 2 steps of unequal token lengths
    # group 2: every step reward equal -> no signal
    steps = [[(1, 1.0), (4, 0.0), (6, 1.0)], [(5, 0.0)], [(0, 1.0), (3, 1.0)],
             [(2, 1.0), (3, 1.0)], [(4, 1.0)], [(1, 1.0)]]
    lengths = [8, 6, 5, 4, 5, 3]
    adv, zero = process_advantages(steps, 3, lengths)
    want = transcription(steps, 3, lengths)
    for got, ref in zip(as_lists(adv, lengths), want):
        assert got == pytest.approx(ref, abs=1e-6)
    assert zero.tolist() == [False, True]
    assert torch.all(adv[3:] == 0)
    # by hand: R = {1, 0, 1, 0, 1, 1}, mean 2/3, std sqrt(1/3 * 6/5 ... ) -> the first token of completion 0
    # carries all three of its steps, its last token only the last one
    R = torch.tensor([1.0, 0, 1, 0, 1, 1])
    norm = (R - R.mean()) / R.std()
    assert adv[0, 0] == pytest.approx(float(norm[0] + norm[1] + norm[2]), abs=1e-6)
    assert adv[0, 7] == pytest.approx(float(norm[2]), abs=1e-6)  # after the last step's end: the last step's
    assert torch.all(adv[0, 8:] == 0) and torch.all(adv[2, 5:] == 0)  # padding


def test_random_groups_with_outcome_added_to_the_last_step_match_the_transcription():
    g = torch.Generator().manual_seed(0)
    for case in range(20):
        G, n_groups = 4, 3
        lengths = torch.randint(1, 12, (G * n_groups,), generator=g).tolist()
        steps = []
        for n in lengths:
            k = int(torch.randint(0, 4, (1,), generator=g))
            ends = sorted(set(torch.randint(0, n, (k,), generator=g).tolist()))
            steps.append([(e, float(torch.randint(0, 3, (1,), generator=g))) for e in ends])
        outcome = torch.randint(0, 2, (len(lengths),), generator=g).float().tolist() if case % 2 else None
        adv, _ = process_advantages(steps, G, lengths, outcome=outcome)
        for got, ref in zip(as_lists(adv, lengths), transcription(steps, G, lengths, outcome)):
            assert got == pytest.approx(ref, abs=1e-5)


def test_one_step_per_completion_at_its_end_is_outcome_supervision():
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    lengths = [3, 5, 2, 4, 4, 1]
    adv, zero = process_advantages([[(n - 1, r)] for n, r in zip(lengths, rewards)], 3, lengths)
    from thinkrl.objective import group_advantages
    outcome, zero_outcome = group_advantages(torch.tensor(rewards), 3)
    for i, n in enumerate(lengths):
        assert adv[i, :n].tolist() == pytest.approx([float(outcome[i])] * n, abs=1e-6)
    assert zero.tolist() == zero_outcome.tolist()


def test_completions_without_steps_get_zero_unless_an_outcome_gives_them_one():
    adv, zero = process_advantages([[], [(1, 1.0)], [(0, 0.0)]], 3, [3, 2, 2])
    assert torch.all(adv[0] == 0) and not zero[0]
    adv, _ = process_advantages([[], [(1, 1.0)], [(0, 0.0)]], 3, [3, 2, 2], outcome=[1.0, 0.0, 0.0])
    assert torch.all(adv[0, :3] > 0)


def test_ragged_groups_are_refused():
    with pytest.raises(ValueError):
        process_advantages([[(0, 1.0)]] * 5, 2, [1] * 5)


@pytest.mark.parametrize("agg", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_the_loss_with_per_token_advantages_matches_the_transcription(agg, beta):
    for seed in range(3):
        base, old, ref, _, mask = random_case(seed)
        adv = torch.randn(base.shape, generator=torch.Generator().manual_seed(seed + 10))
        a = base.clone().requires_grad_(True)
        b = base.clone().requires_grad_(True)
        loss, _ = grpo_loss(a, old, adv, mask, ref_logp=ref, beta=beta, eps_low=0.2, eps_high=0.28, aggregation=agg)
        ref_l = reference_loss(b, old, ref, adv, mask, beta, 0.2, 0.28, agg)
        loss.backward()
        ref_l.backward()
        assert torch.allclose(loss, ref_l, atol=1e-10)
        assert torch.allclose(a.grad, b.grad, atol=1e-10)


def test_per_token_advantages_wider_than_the_batch_are_cut_to_it():
    base, old, _, adv, mask = random_case(1)
    wide = torch.cat([adv[:, None].expand(base.shape), torch.full((base.shape[0], 5), 99.0)], dim=1)
    per_token, _ = grpo_loss(base, old, wide, mask)
    per_sequence, _ = grpo_loss(base, old, adv, mask)
    assert torch.allclose(per_token, per_sequence, atol=1e-12)
