r"""The GRPO objective (DeepSeekMath, arXiv 2402.03300, eq. 3; DeepSeek-R1, arXiv 2501.12948).

For a question q the old policy samples a group of G outputs o_1..o_G with rewards r_i.

Advantage (outcome supervision), the same for every token of o_i::

    A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)

``std`` is the sample standard deviation (N-1), as in TRL and verl. A group whose rewards
are all equal carries no signal: its advantages are 0 (never a division by zero) and it is
counted in ``zero_std_frac``. Dr. GRPO (arXiv 2503.20783) drops the division by std.

Advantage (process supervision, DeepSeekMath §4.1.3). A step reward scores each reasoning
step: o_i has steps ending at tokens index(1) < ... < index(K_i), with rewards r_i^index(j).
Over all steps of all G outputs of the group R = {r_i^index(j)},

    r~_i^index(j) = (r_i^index(j) - mean(R)) / std(R)
    A_it = Σ_{index(j) >= t} r~_i^index(j)          (the steps from t's own step on)

A completion's steps cover it: tokens after its last step's end belong to that last step.
With an outcome reward as well, it is added to the last step's reward before the
normalisation (a completion without steps then has one, its whole text). A group with fewer
than two step rewards, or all of them equal, carries no signal (advantages 0, flagged).

Per-token objective, maximised::

    ρ_it  = π_θ(o_it | q, o_i<t) / π_old(o_it | q, o_i<t)
    l_it  = min(ρ_it A_i, clip(ρ_it, 1 - ε_low, 1 + ε_high) A_i) - β KL_it
    KL_it = π_ref/π_θ - log(π_ref/π_θ) - 1        (k3 estimator, unbiased, >= 0)

Asynchronous rollouts sample with a policy π_behaviour some updates older than π_old; each
token's term is then weighted by the truncated importance weight (truncated IS, as in verl)
w_it = min(π_old/π_behaviour, C), a constant in the gradient, applied to the clipped term only.

ε_high = ε_low is the original clip; ε_high > ε_low is DAPO's clip-higher (arXiv 2503.14476).
The loss is -l aggregated over tokens by one of ``AGGREGATIONS``:

    grpo     1/G Σ_i 1/|o_i| Σ_t l_it                  DeepSeekMath eq. 3 (per-sequence mean)
    dapo     Σ_i Σ_t l_it / Σ_i |o_i|                   DAPO eq. 8 (token mean over the batch)
    dr_grpo  Σ_i Σ_t l_it / (G · L_max)                 Dr. GRPO (constant normaliser)

The normalisers are those of the *whole batch*, passed in explicitly, so that splitting a
batch into micro-batches with gradient accumulation gives the same gradient as processing
it whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-6):
    """Group-relative advantages for rewards laid out group after group.

    Returns (advantages [N], zero_std [N // group_size] bool): groups whose rewards have
    std <= eps get advantage 0 and are flagged.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.view(-1, group_size).to(torch.float64)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True)  # unbiased (N-1)
    zero = std.squeeze(1) <= eps
    centred = r - mean
    if scale_std:
        centred = torch.where(std > eps, centred / std.clamp_min(eps), torch.zeros_like(centred))
    else:
        centred = torch.where(std > eps, centred, torch.zeros_like(centred))
    return centred.reshape(-1).to(rewards.dtype), zero


def process_advantages(steps: list[list[tuple[int, float]]], group_size: int, lengths: list[int],
                       outcome: list[float] | None = None, scale_std: bool = True, eps: float = 1e-6):
    """Process-supervised advantages (module docstring) for completions laid out group after group.

    steps[i]: (index of the step's last token, reward) for each step of completion i, index
    increasing; lengths[i]: its number of tokens. Returns (advantages [N, max length] float32,
    right-padded with 0, zero_std [N // group_size] bool)."""
    if len(steps) % group_size or len(steps) != len(lengths):
        raise ValueError(f"{len(steps)} step lists for {len(lengths)} completions do not split into groups of {group_size}")
    steps = [list(s) for s in steps]
    if outcome is not None:  # the outcome reward joins the last step (a step of its own when there is none)
        for s, n, r in zip(steps, lengths, outcome):
            if s:
                s[-1] = (s[-1][0], s[-1][1] + r)
            else:
                s.append((n - 1, r))
    out = torch.zeros(len(steps), max([1, *lengths]), dtype=torch.float64)
    zero = torch.zeros(len(steps) // group_size, dtype=torch.bool)
    for g in range(len(zero)):
        members = range(g * group_size, (g + 1) * group_size)
        R = torch.tensor([r for i in members for _, r in steps[i]], dtype=torch.float64)
        std = R.std() if len(R) > 1 else torch.tensor(0.0, dtype=torch.float64)
        if len(R) < 2 or std <= eps:
            zero[g] = True
            continue
        mean = float(R.mean())
        for i in members:
            ends = [min(e, lengths[i] - 1) for e, _ in steps[i]]
            if steps[i]:
                ends[-1] = lengths[i] - 1  # the last step runs to the end of the completion
            starts = [0] + [e + 1 for e in ends[:-1]]
            to_go = 0.0  # Σ of the normalised rewards of this step and the ones after it
            for (_, r), a, b in reversed(list(zip(steps[i], starts, ends))):
                to_go += (r - mean) / float(std) if scale_std else r - mean
                if b >= a:
                    out[i, a:b + 1] = to_go
    return out.to(torch.float32), zero


def _grpo(loss_tok, mask, norm):
    return ((loss_tok * mask).sum(-1) / mask.sum(-1).clamp_min(1)).sum() / norm.num_sequences


def _dapo(loss_tok, mask, norm):
    return (loss_tok * mask).sum() / norm.num_tokens


def _dr_grpo(loss_tok, mask, norm):
    return (loss_tok * mask).sum() / (norm.num_sequences * norm.max_len)


AGGREGATIONS = {"grpo": _grpo, "dapo": _dapo, "dr_grpo": _dr_grpo}


@dataclass
class Normaliser:
    """Batch-wide counts the aggregations divide by (see module docstring)."""

    num_sequences: int
    num_tokens: int
    max_len: int

    @classmethod
    def of(cls, mask: torch.Tensor, max_len: int | None = None) -> "Normaliser":
        return cls(int(mask.shape[0]), max(int(mask.sum().item()), 1), int(max_len or mask.shape[1]))


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token KL_it = π_ref/π_θ - log(π_ref/π_θ) - 1 (Schulman's k3), always >= 0.

    mask: positions outside it (padding, whose log-probs are junk) get KL 0 exactly, the
    log-ratio being zeroed *before* the exponential, so junk there can never overflow into
    inf and then NaN (inf · 0) in the loss or its gradient."""
    d = ref_logp - logp
    if mask is not None:
        d = torch.where(mask.bool(), d, torch.zeros_like(d))
    return torch.exp(d) - d - 1


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    aggregation: str = "grpo",
    norm: Normaliser | None = None,
    sequence_ratio: bool = False,
    behaviour_logp: torch.Tensor | None = None,
    tis_cap: float = 2.0,
):
    """The GRPO loss (to minimise) and its statistics.

    logp, old_logp, ref_logp, mask: [B, T] per completion token; advantages: [B] (outcome
    supervision: one per completion) or [B, T] (process supervision: one per token).
    old_logp None means π_old = π_θ (μ = 1): ρ is 1 in value, its gradient is ∇log π_θ.
    sequence_ratio: GSPO (arXiv 2507.18071), ρ_i = exp(mean_t log ρ_it) for every token.
    behaviour_logp [B, T]: the sampler's log-probs (asynchronous rollouts): the clipped term of
    each token weighted by min(π_old/π_behaviour, tis_cap), detached.
    Padding (mask 0) never enters an exponential: its log-ratios are zeroed first, so junk
    log-probs there (huge, ±inf) change neither the loss nor its gradient.
    Returns (loss, stats) where stats holds detached kl, clip_frac and ratio means.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; choose one of {sorted(AGGREGATIONS)}")
    mask = mask.to(logp.dtype)
    norm = norm or Normaliser.of(mask)
    eps_high = eps_low if eps_high is None else eps_high
    old = logp.detach() if old_logp is None else old_logp
    valid = mask.bool()
    log_ratio = torch.where(valid, logp - old, torch.zeros_like(logp))  # padding: ρ = 1, never exp(junk)
    if sequence_ratio:
        seq = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp_min(1)
        log_ratio = seq.unsqueeze(-1).expand_as(logp)
    ratio = torch.exp(log_ratio)
    adv = advantages.to(logp.dtype)
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv[:, : logp.shape[1]]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.min(unclipped, clipped)
    tis = None
    if behaviour_logp is not None:  # π_old/π_behaviour, and its truncation (padding: 1)
        raw_tis = torch.exp(torch.where(valid, old.detach() - behaviour_logp, torch.zeros_like(logp))).detach()
        tis = raw_tis.clamp(max=tis_cap)
        per_token = per_token * tis
    kl = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs reference log-probs")
        kl = k3_kl(logp, ref_logp, valid)
        per_token = per_token + beta * kl
    loss = AGGREGATIONS[aggregation](per_token, mask, norm)
    with torch.no_grad():
        n = mask.sum().clamp_min(1)
        is_clipped = (clipped < unclipped).to(mask.dtype)  # the clip bound was taken
        stats = {
            "clip_frac": float((is_clipped * mask).sum() / n),
            "ratio": float((ratio * mask).sum() / n),
            "kl": float((kl * mask).sum() / n) if kl is not None else 0.0,
        }
        if tis is not None:
            stats.update(tis_weight=float((tis * mask).sum() / n),
                         tis_weight_max=float(raw_tis[valid].max()) if valid.any() else 1.0,
                         tis_capped_frac=float(((raw_tis > tis_cap).to(mask.dtype) * mask).sum() / n))
    return loss, stats
