"""Batched sampling with a KV cache, in the trainer's own process.

Why not `model.generate`: we need the log-probs of what was sampled, stop strings checked
cheaply, and finished sequences dropped from the batch (measured on the tiny model: a plain
cache loop with dropping is faster than `generate`, docs/embedded-task.md §Speed facts). Each
prompt is pre-filled once and its cache repeated for the G samples of its group. The forward
and the cache are `kv.StaticKV`'s for Llama-family models and transformers' otherwise.
"""

from __future__ import annotations

import torch

from .engine import Pending, Rollouts, SamplingParams
from .kv import StaticKV, make_decoder


def sample_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None):
    """Draw one token per row; return (tokens, log-probs under logits / temperature).

    top-k and top-p truncate the distribution that is sampled from; the log-prob returned is
    that of the untruncated tempered distribution, which is what the trainer recomputes.
    Sampling is by inverse CDF with one uniform per row drawn on the CPU generator, so a seed
    gives the same draws on any device.
    """
    scaled = logits.float() / params.temperature
    logp = torch.log_softmax(scaled, dim=-1)
    u = torch.rand(scaled.shape[0], 1, generator=generator, dtype=torch.float64).to(scaled.device)
    tokens = inverse_cdf(truncated_probs(scaled, params), u)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def truncated_probs(scaled: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """softmax(scaled) after top-k and top-p, [B, V]: the tokens they remove have probability 0."""
    filtered = scaled
    if params.top_k and params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if params.top_p < 1.0:
        probs_sorted, order = torch.softmax(filtered, dim=-1).sort(dim=-1, descending=True)
        # drop a token when the tokens more likely than it already cover top_p
        drop_sorted = probs_sorted.cumsum(-1) - probs_sorted > params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        filtered = filtered.masked_fill(drop, float("-inf"))
    return torch.softmax(filtered, dim=-1)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token of each row whose interval of the CDF of `probs` [B, V] holds u × the row's
    total, for u [B, 1] in [0, 1). In float64: a token of probability 1e-9 among 152k has an
    interval of its own (float32 steps by 6e-8 near 1). A token of probability 0 is never
    drawn, whatever u: its CDF value is held at the one before it (a parallel cumsum may round
    it up), so its interval is empty, and u × total is kept below the total."""
    p = probs.double()
    cdf = torch.where(p > 0, p.cumsum(-1), 0.0).cummax(-1).values
    total = cdf[:, -1:]
    v = torch.minimum(u.to(cdf) * total, torch.nextafter(total, torch.zeros_like(total)))
    tokens = torch.searchsorted(cdf, v, right=True).squeeze(-1)  # the first token whose CDF exceeds v
    return tokens.clamp_(max=probs.shape[-1] - 1)  # a row with nothing to draw (NaN logits) stays in range


def _completes(text: str, stop: str) -> bool:
    """Whether a token whose text is `text` can be the one that completes `stop`: the stop
    string lies inside the text, or a prefix of the text is a proper suffix of it."""
    return stop in text or any(stop.endswith(text[:e]) for e in range(1, min(len(text), len(stop) - 1) + 1))


class HFEngine:
    """A `RolloutEngine` over a transformers causal LM (the policy itself: no weight sync)."""

    def __init__(self, model, tokenizer, device, decoder: str = "auto"):
        self.model = model
        self.decoder = decoder  # the KV cache and forward: auto | static | transformers (kv.make_decoder)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {i for i in eos + [tokenizer.eos_token_id] if i is not None}
        if not self.eos_ids:
            raise ValueError("the tokenizer and model define no EOS token; set tokenizer.eos_token")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._stop_cache: dict[tuple[str, ...], torch.Tensor] = {}

    def sync_weights(self, model) -> None:
        self.model = model

    def submit(self, prompt_ids, params, generator=None) -> Pending:
        """In this process, sampling is done at once: the policy as it is now."""
        return Pending(self.generate(prompt_ids, params, generator=generator))

    def wait(self, pending: Pending) -> Rollouts:
        return pending.result

    def _stop_candidates(self, stops: list[str]) -> torch.Tensor:
        """Tokens that can complete one of `stops` (`_completes`), [V] bool, once per list: only
        after one of these is a row's tail decoded and searched."""
        key = tuple(stops)
        if key not in self._stop_cache:
            texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            # a token that is part of a character's bytes decodes alone to U+FFFD: it may complete one
            flags = [any(_completes(t, s) for s in stops if s) or "\ufffd" in t for t in texts]
            vocab = max(len(flags), int(getattr(self.model.config, "vocab_size", 0) or 0))
            self._stop_cache[key] = torch.tensor(flags + [False] * (vocab - len(flags)), dtype=torch.bool)
        return self._stop_cache[key]

    def _decode_tails(self, rows: list[list[int]]) -> list[str]:
        """The texts of a few short token tails, through the fast tokenizer's backend when there
        is one (transformers' decode adds tens of microseconds per call)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return backend.decode_batch(rows, skip_special_tokens=False)
        return [self.tokenizer.decode(r) for r in rows]

    @torch.no_grad()
    def generate(self, prompt_ids, params: SamplingParams, generator=None) -> Rollouts:
        # without gradient and in eval mode no layer is checkpointed, so the KV cache is kept with
        # gradient checkpointing on (transformers drops it in checkpointed training forwards)
        was_training = self.model.training
        self.model.eval()
        try:
            return self._generate(prompt_ids, params, generator)
        finally:
            self.model.train(was_training)

    def _generate(self, prompt_ids, params, generator) -> Rollouts:
        dev = self.device
        B, P = len(prompt_ids), max(len(p) for p in prompt_ids)
        ids = torch.full((B, P), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, P), dtype=torch.long)
        for i, p in enumerate(prompt_ids):  # left padding: every prompt ends at column P-1
            ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
            attn[i, P - len(p):] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp_(min=0)
        decoder = make_decoder(self.model, prompt_ids[0], P + params.max_new_tokens, dev, self.decoder)
        # StaticKV only reads the weights, so its loop may skip autograd's bookkeeping of views and
        # versions (a fifth to a third of a round on the 1M-parameter models, measured); transformers'
        # forward may update a buffer (a dynamic rotary table), which must not become an inference tensor
        with torch.inference_mode(isinstance(decoder, StaticKV)):
            return self._sample(decoder, ids, attn, pos, prompt_ids, params, generator)

    def _sample(self, decoder, ids, attn, pos, prompt_ids, params, generator) -> Rollouts:
        dev, n, B = self.device, params.n, len(prompt_ids)
        logits = decoder.prefill(ids, attn, pos)
        if n > 1:
            decoder.repeat(n)
            logits, attn = logits.repeat_interleave(n, 0), attn.repeat_interleave(n, 0)
        N, T = B * n, params.max_new_tokens
        out_tok = torch.full((N, T), self.pad_id, dtype=torch.long)
        out_lp = torch.zeros((N, T))
        lengths = torch.zeros(N, dtype=torch.long)
        finish = ["length"] * N
        active = torch.arange(N)
        next_pos = attn.sum(-1)
        eos = torch.tensor(sorted(self.eos_ids), device=dev)
        stop_tok = self._stop_candidates(params.stop).to(dev) if params.stop else None
        for t in range(T):
            tok, lp = sample_tokens(logits, params, generator)
            out_tok[active, t] = tok.cpu()
            out_lp[active, t] = lp.float().cpu()
            lengths[active] += 1
            done = torch.isin(tok, eos)
            if stop_tok is not None:
                maybe = (stop_tok[tok] & ~done).nonzero().flatten().tolist()
                if maybe:
                    tails = self._decode_tails([out_tok[int(active[j]), max(0, t - 16): t + 1].tolist() for j in maybe])
                    for j, tail in zip(maybe, tails):
                        if any(s in tail for s in params.stop):
                            done[j] = True
            for j in done.nonzero().flatten().tolist():
                finish[int(active[j])] = "stop"
            if t == T - 1 or bool(done.all()):
                break
            if bool(done.any()):  # drop finished sequences from the batch and its cache
                keep = (~done).nonzero().flatten()
                decoder.keep(keep)
                next_pos, tok, active = next_pos[keep], tok[keep], active[keep.cpu()]
            logits = decoder.step(tok, next_pos)
            next_pos = next_pos + 1
        comp = [out_tok[i, : lengths[i]].tolist() for i in range(N)]
        return Rollouts(
            prompt_ids=[list(prompt_ids[i // n]) for i in range(N)],
            group_ids=[i // n for i in range(N)],
            completion_ids=comp,
            logprobs=[out_lp[i, : lengths[i]].tolist() for i in range(N)],
            texts=self.tokenizer.batch_decode(comp, skip_special_tokens=True),
            finish_reasons=finish,
        )
