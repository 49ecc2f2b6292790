"""The SFT loss: the negative log-likelihood of the response tokens only (labels IGNORE off the
response), per batch as `sft.SFTTrainer` lays it out (padded, packed, or with a shared prefix
whose KV cache serves every row), and the start-up check that the model keeps packed samples
apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..policy import forward_parameters, read_cache, write_cache
from .sft_data import IGNORE, Batch


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ −log softmax(logits)[target] over the targets that are not IGNORE (logits [..., V]
    aligned with targets [...])."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor, normaliser: float | None = None) -> torch.Tensor:
    """Mean NLL over the response tokens. logits [B, L, V] and labels [B, L] aligned with the
    input (labels IGNORE = -100 off the response): the logits at t predict labels[t + 1].
    normaliser: divide by this count instead of this batch's (a whole step's, when
    accumulating gradients over micro-batches)."""
    targets = labels[:, 1:]
    n = normaliser if normaliser is not None else int((targets != IGNORE).sum())
    if n == 0:
        raise ValueError("masked_lm_loss: no response tokens in the batch (every label is -100)")
    return token_nll(logits[:, :-1], targets) / n


def _keeps_logits(model) -> bool:
    return "logits_to_keep" in forward_parameters(model)  # a PEFT model passes it on to its base


def batch_nll(model, batch: Batch) -> torch.Tensor:
    """Summed NLL of a batch's response tokens. Only the positions that predict a response
    token go through the LM head (`logits_to_keep`), which spares the vocabulary projection
    of every prompt token. With `batch.prefix_len` the common prefix runs once and its KV
    cache (gradient included) serves every row, as `policy.completion_logprobs` does for a
    group's shared prompt, with gradient checkpointing on as well (`policy.write_cache`,
    `policy.read_cache`). Both equal masked_lm_loss on the full logits (tested)."""
    targets = batch.labels[:, 1:]  # targets[:, j] is predicted by the logits at position j
    P = batch.prefix_len
    if P:
        head, cache = write_cache(model, input_ids=batch.input_ids[:1, :P], position_ids=batch.position_ids[:1, :P],
                                  **({"logits_to_keep": 1} if _keeps_logits(model) else {}))
        if cache is not None:
            cache.batch_select_indices(torch.zeros(len(batch.input_ids), dtype=torch.long, device=targets.device))
            rest = _rows_nll(model, batch, targets, P, cache)
            if rest is not None:  # else the model read no cache: every row runs whole
                return token_nll(head.logits[:, -1].expand(len(targets), -1), targets[:, P - 1]) + rest
    return _rows_nll(model, batch, targets, 0, None)


def _rows_nll(model, batch: Batch, targets: torch.Tensor, P: int, cache) -> torch.Tensor | None:
    """Summed NLL of the targets after column P, the rows' first P tokens in `cache` (None: P = 0)."""
    ids, pos, targets = batch.input_ids[:, P:], batch.position_ids[:, P:], targets[:, P:]
    keep = (targets != IGNORE).any(0).nonzero().squeeze(1) if _keeps_logits(model) else None
    kwargs = {} if keep is None else {"logits_to_keep": keep}
    if cache is None:
        out = model(input_ids=ids, position_ids=pos, use_cache=False, **kwargs)
    elif (out := read_cache(model, cache, input_ids=ids, position_ids=pos, **kwargs)) is None:
        return None
    if keep is None:
        return token_nll(out.logits[:, :-1], targets)
    return token_nll(out.logits, targets[:, keep])


def check_packing(model, device) -> float:
    """The largest log-prob difference between two samples packed in one row and each run
    alone; ConfigError if the model's attention ignores position-restart packing."""
    V = model.config.vocab_size
    a, b = [(7 * i + 3) % V for i in range(9)], [(5 * i + 11) % V for i in range(6)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        lp = lambda ids, pos: model(input_ids=torch.tensor([ids], device=device), use_cache=False,  # noqa: E731
                                    position_ids=torch.tensor([pos], device=device)).logits.float().log_softmax(-1)
        packed = lp(a + b, list(range(9)) + list(range(6)))[0]
        diff = max(float((packed[:9] - lp(a, list(range(9)))[0]).abs().max()),
                   float((packed[9:] - lp(b, list(range(6)))[0]).abs().max()))
    model.train(was_training)
    if diff > 1e-3:
        raise ConfigError(f"train.packing: this model ({type(model).__name__}, attention "
                          f"{getattr(model.config, '_attn_implementation', '?')}) does not keep packed samples apart "
                          f"(log-prob difference {diff:.2g} against each sample alone); set train.packing=false")
    return diff
