"""The decoder behind the sampling loop: a forward pass that keeps a KV cache.

`StaticKV` runs a decoder-only transformer of the Llama family (llama, qwen2, qwen3, mistral;
a sliding window only where the whole sequence fits in it) step by step over the model's own
weights and modules (a LoRA layer of PEFT is called as the module it is, so its adapter
applies), with a KV cache allocated once per call: the prompt is pre-filled once per group
and copied to its G rows, each new token's keys and values are written in place, and rows
that finished stay (unread) until a quarter have, then the live rows move to the front of the
same buffers. transformers' own forward with its growing cache (`HFCache`) serves every
other model, and serves as the reference: the first time a model is seen, both run on one
prompt and StaticKV is used only if its logits agree.
"""

from __future__ import annotations

import logging
import weakref

import torch
import torch.nn.functional as F

from ..policy import cache_kwarg, output_cache

log = logging.getLogger("thinkrl.rollout")

LLAMA_FAMILY = {"llama", "qwen2", "qwen3", "mistral"}
_STATIC_ROPE = {"default", "linear", "llama3", "yarn"}


class HFCache:
    """transformers' forward and cache. prefill → logits of each prompt's last token [B, V];
    repeat(n) → each row becomes n; step(tokens, positions) → logits [N, V]; keep(rows)."""

    def __init__(self, model, max_len: int):
        self.model = model
        self._arg = cache_kwarg(model)
        self.cache = None
        self.attn = None

    def prefill(self, ids, attn, pos):
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=1, use_cache=True)
        self.cache, self.attn = output_cache(out), attn
        return out.logits[:, -1]

    def repeat(self, n: int):
        if n > 1:
            self.cache.batch_repeat_interleave(n)
            self.attn = self.attn.repeat_interleave(n, 0)

    def keep(self, rows):
        self.cache.batch_select_indices(rows)
        self.attn = self.attn[rows]

    def step(self, tokens, pos):
        self.attn = torch.cat([self.attn, self.attn.new_ones(self.attn.shape[0], 1)], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.attn, position_ids=pos[:, None],
                         use_cache=True, **{self._arg: self.cache})
        self.cache = output_cache(out)
        return out.logits[:, -1]


def _inner(model):
    """The transformers CausalLM under a PEFT wrapper (its LoRA layers stay in the modules)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def static_kv_supported(model, max_len: int | None = None) -> str | None:
    """None if StaticKV can run `model` over `max_len` positions (None: any), else why not."""
    inner = _inner(model)
    cfg = getattr(inner, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in LLAMA_FAMILY:
        return f"model type {kind!r} (StaticKV knows {', '.join(sorted(LLAMA_FAMILY))})"
    if any(type(p).__name__ == "DTensor" for p in inner.parameters()):
        return "sharded parameters (FSDP)"
    window = getattr(cfg, "sliding_window", None) if kind == "mistral" or getattr(cfg, "use_sliding_window", False) \
        else None
    if window and (max_len is None or max_len > window):  # within the window, attention is full
        return f"a sliding attention window of {window} positions, shorter than {max_len or 'the sequence'}"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "layers other than full attention"
    rope = (getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if rope.get("rope_type", rope.get("type", "default")) not in _STATIC_ROPE:
        return f"rope type {rope.get('rope_type')!r}"
    body = getattr(inner, "model", None)
    if body is None or not all(hasattr(body, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return "a module layout other than model.{embed_tokens, layers, norm, rotary_emb}"
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "attn_logit_softcapping", None):
        return "soft-capped logits"
    return None


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


_RMS_NORMS = {"LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm"}


def _norm(module, x):
    """transformers' RMSNorm of the Llama family in one fused op (float32 inside, the weight
    applied in the input's dtype, as transformers does); any other norm module as it is."""
    if type(module).__name__ not in _RMS_NORMS:
        return module(x)
    if x.dtype == torch.float32 and module.weight.dtype == torch.float32:
        return F.rms_norm(x, x.shape[-1:], module.weight, module.variance_epsilon)
    return module.weight * F.rms_norm(x.float(), x.shape[-1:], eps=module.variance_epsilon).to(x.dtype)


_MLPS = {"LlamaMLP", "Qwen2MLP", "Qwen3MLP", "MistralMLP"}


def _linear(m):
    """A plain nn.Linear as its (weight, bias), called without the module machinery; anything
    else (a LoRA layer) as the module itself."""
    return (m.weight, m.bias) if type(m) is torch.nn.Linear else m


def _apply(lin, x):
    return F.linear(x, *lin) if type(lin) is tuple else lin(x)


class _Layer:
    """One decoder layer's parts, looked up once per call."""

    def __init__(self, layer):
        a, mlp = layer.self_attn, layer.mlp
        self.q, self.k, self.v, self.o = (_linear(m) for m in (a.q_proj, a.k_proj, a.v_proj, a.o_proj))
        self.q_norm, self.k_norm = getattr(a, "q_norm", None), getattr(a, "k_norm", None)  # qwen3
        self.norm1, self.norm2, self.mlp = layer.input_layernorm, layer.post_attention_layernorm, mlp
        self.gate_up_down = None
        if type(mlp).__name__ in _MLPS:
            self.gate_up_down = (_linear(mlp.gate_proj), _linear(mlp.up_proj), _linear(mlp.down_proj), mlp.act_fn)

    def feed_forward(self, x):
        if self.gate_up_down is None:
            return self.mlp(x)
        gate, up, down, act = self.gate_up_down
        return _apply(down, act(_apply(gate, x)) * _apply(up, x))


class StaticKV:
    """A preallocated KV cache for `max_len` positions and the step-by-step forward of a
    Llama-family model (see the module's docstring). Same interface as `HFCache`."""

    def __init__(self, model, max_len: int):
        inner = _inner(model)
        self.body, self.lm_head, self.max_len = inner.model, inner.lm_head, max_len
        self.layers = [_Layer(layer) for layer in self.body.layers]
        attn = self.body.layers[0].self_attn
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        cfg = inner.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.k = self.v = None
        self.n = 0  # live rows
        self.length = 0  # columns filled

    def _attention(self, i, layer, x, rope, t0, mask):
        """x [N, T, hidden] at columns t0..t0+T-1 of the cache; rope: (cos, sin) [N, 1, T, D]."""
        N, T, _ = x.shape
        q = _apply(layer.q, x).view(N, T, -1, self.head_dim)
        k = _apply(layer.k, x).view(N, T, -1, self.head_dim)
        v = _apply(layer.v, x).view(N, T, -1, self.head_dim).transpose(1, 2)
        if layer.q_norm is not None:
            q, k = _norm(layer.q_norm, q), _norm(layer.k_norm, k)
        qk = _rotate(torch.cat((q, k), dim=2).transpose(1, 2), *rope)  # queries and keys rotated at once
        q, k = qk[:, :self.heads], qk[:, self.heads:]
        if self.k is None:
            shape = (N, self.kv_heads, self.max_len, self.head_dim)
            self.k = [k.new_empty(shape) for _ in self.layers]
            self.v = [k.new_empty(shape) for _ in self.layers]
        self.k[i][:N, :, t0:t0 + T] = k
        self.v[i][:N, :, t0:t0 + T] = v
        keys, values = self.k[i][:N, :, :t0 + T], self.v[i][:N, :, :t0 + T]
        group = self.heads // self.kv_heads
        if T == 1:  # one query per head, a kv head's group of them together: plain matmuls beat
            # SDPA's kernel on these short rows (measured on CPU)
            scores = torch.matmul(q.reshape(N, self.kv_heads, group, -1), keys.transpose(-1, -2)) * self.scaling
            if mask is not None:
                scores = scores + mask
            out = torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype), values)
        else:
            if group > 1:
                keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling)
        return _apply(layer.o, out.reshape(N, self.heads, T, -1).transpose(1, 2).reshape(N, T, -1))

    def _forward(self, ids, pos, t0, mask, last_only):
        x = self.body.embed_tokens(ids)
        rope = self.cos[pos][:, None], self.sin[pos][:, None]
        for i, layer in enumerate(self.layers):
            x = x + self._attention(i, layer, _norm(layer.norm1, x), rope, t0, mask)
            x = x + layer.feed_forward(_norm(layer.norm2, x))
        x = _norm(self.body.norm, x[:, -1:] if last_only else x)
        return self.lm_head(x)[:, -1]

    def prefill(self, ids, attn, pos):
        B, P = ids.shape
        rows = torch.arange(self.max_len, device=ids.device)[None]
        cos, sin = self.body.rotary_emb(self.body.embed_tokens.weight[:1][None], rows)
        self.cos, self.sin = cos[0], sin[0]
        self.valid = torch.ones(B, self.max_len, dtype=torch.bool, device=ids.device)
        self.valid[:, :P] = attn.bool()
        self.padded = not bool(self.valid[:, :P].all())
        if self.padded:  # causal, over real tokens; a padding query sees itself
            causal = torch.ones(P, P, dtype=torch.bool, device=ids.device).tril()
            mask = (causal[None] & self.valid[:, None, :P]) | torch.eye(P, dtype=torch.bool, device=ids.device)
            mask = mask[:, None]
        else:
            mask = torch.ones(P, P, dtype=torch.bool, device=ids.device).tril()
        logits = self._forward(ids, pos, 0, mask, last_only=True)
        self.n, self.length = B, P
        self.live = torch.arange(B, device=ids.device)
        return logits

    def repeat(self, n: int):
        if n == 1:
            return
        B, P = self.n, self.length
        for cache in (self.k, self.v):
            for i, c in enumerate(cache):
                grown = c.new_empty((B * n,) + tuple(c.shape[1:]))
                grown[:, :, :P] = c[:B, :, :P].repeat_interleave(n, 0)
                cache[i] = grown
        self.valid = self.valid.repeat_interleave(n, 0)
        self.n = B * n
        self.live = torch.arange(self.n, device=self.valid.device)

    def keep(self, rows):
        """Keep the live rows `rows` (ascending indices among the live rows). The dropped rows'
        cache stays (and they keep being computed, unread) until a quarter of the rows are
        dropped; the live rows are then moved to the front of the buffers."""
        self.live = self.live[rows]
        m = len(self.live)
        if m > 0.75 * self.n:
            return
        L = self.length
        for cache in (self.k, self.v):
            for c in cache:
                c[:m, :, :L] = c[self.live, :, :L]
        self.valid[:m] = self.valid[self.live]
        self.n, self.live = m, torch.arange(m, device=self.live.device)

    def step(self, tokens, pos):
        """logits [live rows, V] after feeding each live row its next token at its position."""
        t0, N = self.length, self.n
        if t0 >= self.max_len:
            raise RuntimeError(f"StaticKV: more than {self.max_len} positions")
        if len(self.live) < N:  # dropped rows not yet compacted away take a harmless token
            tokens = tokens.new_zeros(N).index_copy_(0, self.live, tokens)
            pos = pos.new_zeros(N).index_copy_(0, self.live, pos)
        mask = None
        if self.padded:  # 0 where a key is a token, -inf where it is padding
            mask = torch.zeros(N, 1, 1, t0 + 1, device=tokens.device).masked_fill_(~self.valid[:N, None, None, :t0 + 1],
                                                                                 float("-inf"))
        logits = self._forward(tokens[:, None], pos[:, None], t0, mask, last_only=False)
        self.length = t0 + 1
        return logits if len(self.live) == N else logits[self.live]


_REFUSED = weakref.WeakKeyDictionary()  # model → why StaticKV failed its first-use check ("" if it passed)
_LOGGED = weakref.WeakKeyDictionary()  # model → the reason last logged for not using StaticKV

@torch.no_grad()
def _agrees(model, ids, tol: float = 1e-3) -> bool:
    """StaticKV's logits against transformers' on a prompt [1, P] and two new tokens."""
    attn, pos = torch.ones_like(ids), torch.arange(ids.shape[1], device=ids.device)[None]
    a, b = StaticKV(model, ids.shape[1] + 2), HFCache(model, ids.shape[1] + 2)
    diffs, nxt = [], None
    for k in range(3):
        la, lb = (a.prefill(ids, attn, pos), b.prefill(ids, attn, pos)) if k == 0 else (
            a.step(nxt, pos[:, -1] + k), b.step(nxt, pos[:, -1] + k))
        scale = lb.float().abs().max().clamp(min=1.0)
        diffs.append(float(((la.float() - lb.float()).abs().max() / scale)))
        nxt = lb.argmax(-1)
    tol = tol if next(model.parameters()).dtype == torch.float32 else 5e-2
    return max(diffs) <= tol


def _first_use_check(model, ids) -> str:
    """Why StaticKV must not run `model` ("" if it may): its logits differ from transformers',
    or it cannot read the model's layout."""
    try:
        return "" if _agrees(model, ids) else "its logits differ from transformers' forward"
    except (AttributeError, TypeError, RuntimeError, ValueError) as e:  # a layout StaticKV cannot read
        return f"StaticKV failed on it ({type(e).__name__}: {e})"


def make_decoder(model, probe: list[int], max_len: int, device, kind: str = "auto"):
    """kind "auto": StaticKV when it supports `model` and agreed with transformers' forward on
    it the first time it was seen (checked on the last 8 tokens of `probe`, a prompt), HFCache
    otherwise; "static" or "transformers" choose (StaticKV still refuses what it cannot run)."""
    if kind == "transformers":
        return HFCache(model, max_len)
    why = static_kv_supported(model, max_len)
    if kind == "static":
        if why:
            raise ValueError(f"StaticKV cannot run this model: {why}")
        return StaticKV(model, max_len)
    if why is None:
        if model not in _REFUSED:
            probe_ids = torch.tensor([probe[-8:] or [0]], dtype=torch.long, device=device)
            _REFUSED[model] = _first_use_check(model, probe_ids)
        why = _REFUSED[model]
    if why:
        if _LOGGED.get(model) != why:
            log.info("sampling through transformers' forward and cache: %s", why)
            _LOGGED[model] = why
        return HFCache(model, max_len)
    return StaticKV(model, max_len)
