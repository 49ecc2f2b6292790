"""The policy network: loading any transformers causal LM, and the per-token log-probs of
completions that the objective needs (for π_θ, π_old and π_ref alike).

Batches use the rollout layout: prompts left-padded to P columns, completions right-padded
to C columns, so the logits at columns P-1 .. P+C-2 predict completion tokens 0 .. C-1.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .adapters import adapter_base, merged_adapter


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_model_path(path: str) -> str:
    if path == "embedded":
        from .task import TINY_DIR

        return str(TINY_DIR)
    if path == "embedded-student":
        from .task import STUDENT_DIR

        return str(STUDENT_DIR)
    return path


class ModelNotFound(ValueError):
    """A model or tokenizer that cannot be loaded from where its path says; the message says
    what to give instead."""


def _from_pretrained(cls, path: str, what: str, **kwargs):
    try:
        return cls.from_pretrained(resolve_model_path(path), **kwargs)
    except OSError as e:  # transformers' "not a local folder and not a model on the hub", unreachable hub, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelNotFound(f"cannot load the {what} {path!r}: {first} -- give a local model directory (with "
                            "config.json), 'embedded', or a hub id such as Qwen/Qwen2.5-0.5B") from None


def disable_dropout(model):
    """Set every dropout probability of `model` to 0, in place, and return it: the nn.Dropout
    modules, the float rates modules keep for functional dropout (attention_dropout, ...)
    and the config's (so a saved checkpoint says what was trained). Training with dropout
    on would make π_θ differ from itself: two forwards of the same weights give different
    log-probs, so ρ ≠ 1 and KL ≠ 0 before any update (GPT-2 has 0.1 everywhere)."""
    dropout_modules = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
                       torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)
    for module in model.modules():
        if isinstance(module, dropout_modules):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "drop" in name and isinstance(value, float) and value > 0:
                setattr(module, name, 0.0)
    configs, seen = [getattr(model, "config", None)], set()
    while configs:
        config = configs.pop()
        if config is None or id(config) in seen:
            continue
        seen.add(id(config))
        for name, value in list(vars(config).items()):
            if "drop" in name and isinstance(value, float) and value > 0:  # attention_dropout, resid_pdrop, ...
                setattr(config, name, 0.0)
            elif hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a sub-config (text_config, ...)
                configs.append(value)
    return model


def load_model(path: str, device: torch.device, requires_grad: bool = True):
    """A causal LM from a local directory or a hub id, in float32 (mixed precision is by autocast),
    with dropout off (`disable_dropout`), as every trainer here needs it. A LoRA run's output (a
    directory with adapter_config.json and no config.json) loads as its base with the adapter
    merged in: a plain model, for evaluation, a teacher or the next stage's start."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # thinkrl shows its own progress
    base = adapter_base(resolve_model_path(path))
    if base is not None:
        model = disable_dropout(merged_adapter(load_model(base, device), resolve_model_path(path)))
    else:
        model = disable_dropout(_from_pretrained(AutoModelForCausalLM, path, "model", dtype=torch.float32))
    model.to(device)
    if not requires_grad:
        model.eval().requires_grad_(False)
    return model


def _tokenizer_json(path: str) -> dict | None:
    """The tokenizer.json of a local directory or of a hub model in the cache, parsed; None if none."""
    import json

    from huggingface_hub import try_to_load_from_cache

    where, name = resolve_model_path(path), "tokenizer.json"
    try:
        file = os.path.join(where, name) if os.path.isdir(where) else try_to_load_from_cache(where, name)
    except ValueError:  # not a hub id either
        return None
    found = isinstance(file, str) and os.path.isfile(file)  # the cache answers None or a marker when not there
    return json.loads(Path(file).read_text(encoding="utf-8")) if found else None


def _differs(backend, spec: dict) -> bool:
    """Whether a `tokenizers` pipeline differs from tokenizer.json `spec`, the small parts first (the
    post-processor aside: add_bos_token / add_eos_token of tokenizer_config.json rewrite it in any class)."""
    import json

    parts = {k: getattr(backend, k) for k in ("normalizer", "pre_tokenizer", "decoder")}
    if any(spec.get(k) != (None if v is None else json.loads(v.__getstate__())) for k, v in parts.items()):
        return True
    full = json.loads(backend.to_str())
    return any(full.get(k) != spec.get(k) for k in ("model", "added_tokens"))


def load_tokenizer(path: str):
    """The tokenizer of `path`, padding on the left (pad = eos when it has none), encoding as its
    tokenizer.json says. transformers 5 picks the class by model type (Qwen2Tokenizer for a qwen2
    config, whatever tokenizer_config.json names), and such a class builds its own normalizer,
    pre-tokenizer and decoder around the file's vocabulary: a model's own tokenizer (digits split,
    no NFC, ...) would become Qwen2's, in every checkpoint too. When so, the generic
    TokenizersBackend is loaded instead: the file verbatim, with tokenizer_config.json's settings."""
    from transformers import AutoTokenizer
    from transformers import PreTrainedTokenizerFast as TokenizersBackend  # its name in transformers 5; 4.x too

    tok = _from_pretrained(AutoTokenizer, path, "tokenizer")
    own_class = isinstance(tok, TokenizersBackend) and type(tok) is not TokenizersBackend  # else it read the file as is
    spec = _tokenizer_json(path) if own_class else None
    if spec is not None and _differs(tok.backend_tokenizer, spec):
        tok = _from_pretrained(TokenizersBackend, path, "tokenizer")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def autocast(device: torch.device, dtype: str = "auto"):
    """bfloat16 autocast on CUDA (unless float32 was asked for); plain float32 on CPU."""
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class SequenceBatch:
    input_ids: torch.Tensor  # [N, P + C]
    attention_mask: torch.Tensor  # [N, P + C]
    completion_ids: torch.Tensor  # [N, C]
    completion_mask: torch.Tensor  # [N, C] bool
    prompt_len: int  # P
    group_ids: torch.Tensor | None = None  # [N]: rows of one group share their prompt (`Rollouts.group_ids`)

    def __len__(self):
        return self.input_ids.shape[0]

    def slice(self, s: slice) -> "SequenceBatch":
        groups = None if self.group_ids is None else self.group_ids[s]
        return SequenceBatch(self.input_ids[s], self.attention_mask[s], self.completion_ids[s],
                             self.completion_mask[s], self.prompt_len, groups)

    @classmethod
    def build(cls, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int, device,
              group_ids: list[int] | None = None) -> "SequenceBatch":
        if group_ids is not None:
            first: dict[int, list[int]] = {}
            if any(first.setdefault(g, p) != p for g, p in zip(group_ids, prompt_ids)):
                raise ValueError("group_ids put completions of different prompts in one group")
        N = len(prompt_ids)
        P = max(len(p) for p in prompt_ids)
        C = max(1, max(len(c) for c in completion_ids))
        ids = torch.full((N, P + C), pad_id, dtype=torch.long)
        attn = torch.zeros((N, P + C), dtype=torch.long)
        for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
            ids[i, P - len(p): P] = torch.tensor(p, dtype=torch.long)
            ids[i, P: P + len(c)] = torch.tensor(c, dtype=torch.long)
            attn[i, P - len(p): P + len(c)] = 1
        comp_mask = attn[:, P:].bool()
        groups = None if group_ids is None else torch.tensor(group_ids, dtype=torch.long, device=device)
        return cls(ids.to(device), attn.to(device), ids[:, P:].to(device), comp_mask.to(device), P, groups)


def forward_parameters(model) -> set[str]:
    """The names `model`'s forward takes (a PEFT model's are its base's, which it passes them to)."""
    forward = model.get_base_model().forward if hasattr(model, "get_base_model") else model.forward
    return set(inspect.signature(forward).parameters)


def cache_kwarg(model) -> str:
    """The name of the KV-cache argument: `cache` in transformers >= 5.2x, `past_key_values` before."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"


def output_cache(out):
    return out["cache"] if "cache" in out else out.past_key_values


def common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest first stretch of tokens that every sequence shares, leaving each
    at least one token after it (a prefix run once, its KV cache serving every row)."""
    n, first = min(len(s) for s in seqs) - 1, seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
        if n == 0:
            break
    return max(n, 0)


def enable_gradient_checkpointing(model, setting: str = "train.gradient_checkpointing"):
    """Turn on transformers' activation checkpointing in every decoder layer, non-reentrant (no
    input needs a gradient: frozen embeddings and LoRA work); return the model. A layer keeps
    only its input for the backward pass and runs again there: less memory, about one more
    forward of time, the same gradients (tested). Forwards without gradient (sampling, π_old,
    π_ref) are not checkpointed. `setting`: the config key the error names."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing in transformers; set "
                         f"{setting}=false")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x: the old name is a deprecated alias
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def _checkpointed_layers(model) -> list:
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]


def checkpointing_active(model) -> bool:
    """Whether a forward of `model` now is checkpointed: a layer with checkpointing on, in
    training mode, with the gradient enabled (`GradientCheckpointingLayer`'s own condition)."""
    return torch.is_grad_enabled() and any(m.training for m in _checkpointed_layers(model))


def write_cache(model, **kwargs):
    """model(**kwargs, use_cache=True) and its KV cache (None if it kept none): the forward of
    a prompt (a prefix) whose cache will serve several rows (`read_cache`). It runs without
    checkpointing (transformers drops the cache of a checkpointed layer, whose replay would
    write it twice), so its activations are kept for the backward pass, once per prompt."""
    layers = _checkpointed_layers(model)
    for m in layers:
        m.gradient_checkpointing = False
    try:
        out = model(use_cache=True, **kwargs)
    finally:
        for m in layers:
            m.gradient_checkpointing = True
    cache = output_cache(out)
    return out, (None if cache is None or cache.get_seq_length() == 0 else cache)


def read_cache(model, cache, **kwargs):
    """model(**kwargs) attending to `cache` (one row per input row) without writing to it, or
    None if the model ignored the cache (the caller then runs its rows whole). Read-only, the
    cache can stay in a checkpointed layer: the replay in the backward pass reads the same
    keys and values, and the gradient reaches the prompt's forward through them. The layers
    are told so (`_can_checkpoint_with_cache`, transformers >= 5.2x; before, None here)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    active = checkpointing_active(model)
    if active and not hasattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache"):
        return None
    reads = [0]
    update = cache.update

    def read_only(key_states, value_states, layer_idx, *args, **kw):  # the keys/values with these appended, unstored
        layer = cache.layers[layer_idx]
        kept = layer.keys, layer.values
        out = update(key_states, value_states, layer_idx, *args, **kw)
        layer.keys, layer.values = kept
        reads[0] += 1
        return out

    cache.update = read_only
    readers = _checkpointed_layers(model)
    for m in readers:
        m._can_checkpoint_with_cache = True
    try:
        out = model(use_cache=not active, **{cache_kwarg(model): cache}, **kwargs)  # as transformers sets it, unwarned
    finally:
        for m in readers:
            del m._can_checkpoint_with_cache
    return out if reads[0] else None


def completion_logprobs(model, batch: SequenceBatch, temperature: float = 1.0, share_prompts: bool = True) -> torch.Tensor:
    """log π(o_t | q, o_<t) for every completion token, [N, C] (padding positions hold junk
    values and are masked by the caller). Logits are divided by the sampling temperature, so
    these are log-probs of the distribution the rollout engine sampled from.

    share_prompts: the G samples of a group share their prompt, so with `batch.group_ids` each
    group's prompt is run once and its KV cache (gradient included) serves every completion of
    it. With the long R1-Zero template that removes most of the tokens of the forward and
    backward pass; the values and gradients are those of the plain forward (tested). A batch
    without group ids runs the plain forward.

    With gradient checkpointing on, prompts are still shared: their forward runs unchecked
    (`write_cache`, activations kept once per group), the completions' forward checkpointed,
    each layer reading the cache again in its replay (`read_cache`). Its arithmetic is that
    without checkpointing, so π_θ equals the no-gradient π_old bit for bit (ρ = 1 at the first
    update). A model that keeps no cache then (older transformers) runs the plain forward.
    """
    C = batch.completion_ids.shape[1]
    if share_prompts and batch.group_ids is not None:
        groups, inverse = torch.unique(batch.group_ids, return_inverse=True)  # numbered 0..k-1 in this batch
        if len(groups) < len(batch):
            lp = _shared_prompt_logprobs(model, batch, inverse, len(groups), temperature)
            if lp is not None:
                return lp
    pos = (batch.attention_mask.cumsum(-1) - 1).clamp_(min=0)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos,
                use_cache=False, logits_to_keep=C + 1)
    return _token_logprobs(out.logits[:, :-1], batch.completion_ids, temperature)


def _token_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log-softmax(logits / T) at `ids`: [N, C, V], [N, C] → [N, C]."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def length_buckets(lengths: list[int], most: int = 3) -> list[list[int]]:
    """Rows in groups of similar completion length, shortest first, so that each group is padded
    only to its own longest: 1 to `most` groups of equal count, as many as cut the padded
    tokens by more than 10% each (a forward pass more costs about that on small models)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best, best_cost = [order], len(order) * max(lengths, default=0)
    for k in range(2, min(most, len(order)) + 1):
        cuts = [round(j * len(order) / k) for j in range(k + 1)]
        parts = [order[a:b] for a, b in zip(cuts, cuts[1:])]
        cost = sum(len(p) * lengths[p[-1]] for p in parts)
        if cost < 0.9 * best_cost:
            best, best_cost = parts, cost
    return best


def _shared_prompt_logprobs(model, batch: SequenceBatch, inverse: torch.Tensor, n_unique: int,
                            temperature: float) -> torch.Tensor | None:
    """`completion_logprobs` [N, C] with each distinct prompt run once, its keys and values
    (gradient included) serving every completion of it; the completions run in groups of
    similar length (`length_buckets`), each padded only to its own longest. None when the model
    kept or read no cache (the caller runs the plain forward)."""
    P, C = batch.prompt_len, batch.completion_ids.shape[1]
    first = torch.full((n_unique,), len(batch), dtype=torch.long, device=inverse.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(batch), device=inverse.device), reduce="amin")
    ids, attn = batch.input_ids[first, :P], batch.attention_mask[first, :P]
    out, cache = write_cache(model, input_ids=ids, attention_mask=attn,
                             position_ids=(attn.cumsum(-1) - 1).clamp(min=0), logits_to_keep=1)
    if cache is None:
        return None
    n_prompt = batch.attention_mask[:, :P].sum(-1, keepdim=True)
    lengths = batch.completion_mask.sum(-1).tolist()
    parts, rows = [], []
    for bucket in length_buckets(lengths):
        idx = torch.tensor(bucket, device=inverse.device)
        prompt_of = inverse[idx]  # row i of the bucket attends to its prompt's keys/values
        Cb = max(1, max(lengths[i] for i in bucket))
        view = copy.copy(cache)  # its own cache object (a checkpointed layer's replay reads it again)
        view.layers = [copy.copy(layer) for layer in cache.layers]
        for layer in view.layers:
            layer.keys, layer.values = layer.keys[prompt_of], layer.values[prompt_of]
        rest = read_cache(model, view, input_ids=batch.completion_ids[idx, :Cb],
                          attention_mask=batch.attention_mask[idx, :P + Cb],
                          position_ids=n_prompt[idx] + torch.arange(Cb, device=n_prompt.device))
        if rest is None:
            return None
        logits = torch.cat([out.logits[:, -1:][prompt_of], rest.logits[:, :-1]], dim=1)
        parts.append(F.pad(_token_logprobs(logits, batch.completion_ids[idx, :Cb], temperature), (0, C - Cb)))
        rows.extend(bucket)
    return torch.cat(parts)[torch.tensor(rows, device=inverse.device).argsort()]  # back to the batch's order
