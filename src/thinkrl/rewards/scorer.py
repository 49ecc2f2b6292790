"""A trained reward model (`thinkrl rm` makes them): a causal LM body with a scalar head, loaded
from its directory (`RewardModel.from_dir`) and scoring (question, response) pairs. The
sequence layout is shared with training (`thinkrl.train.reward_model`): prompt ids + response ids
(+ EOS), left-padded, the score read at the last column; a first stretch shared by all rows
runs once, its KV cache serving every row. The part of a response that is scored: `whole`,
or `summary` (the text after the last `</think>`). The rewards `reward_model`, `helpfulness`
and `harmlessness` (`rewards.model`) serve it to GRPO.

A process reward model (`thinkrl rm` with `train.objective=step`) is the same model read at
the last token of each step of a completion instead (`encode_steps`, `step_logits`,
`RewardModel.score_steps`): a step ending at character `end` is read at the token that holds
character `end - 1`, found from the tokenizer's character offsets (or, for a tokenizer
without them, by decoding ever longer prefixes). No EOS is appended and no prefix is shared.
The `process_model` step reward (`rewards.process_model`) serves it.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from pathlib import Path

import torch

from ..checks import ConfigError
from ..policy import (autocast, cache_kwarg, common_prefix_len, load_tokenizer, output_cache, resolve_device,
                      resolve_model_path)
from ..task.general import summary_of
from ..template import render

INFO_FILE = "thinkrl_rm.json"


def response_part(text: str, part: str) -> str:
    """The part of a response a reward model reads: all of it, or the summary."""
    if part == "whole":
        return text
    if part == "summary":
        return summary_of(text)
    raise ValueError(f"part {part!r}: use whole or summary")


def encode(tokenizer, prompt_texts: list[str], response_texts: list[str]) -> list[list[int]]:
    """prompt ids + response ids (+ EOS, the token the score is read at, unless EOS is the
    pad token) for each pair of texts: tokenized apart, the way the policy's completions
    follow its prompts, and in batches (one call per list, distinct prompts once)."""
    distinct = list(dict.fromkeys(prompt_texts))
    prompt_ids = dict(zip(distinct, tokenizer(distinct, add_special_tokens=False)["input_ids"]))
    response_ids = tokenizer(list(response_texts), add_special_tokens=False)["input_ids"] if response_texts else []
    eos = tokenizer.eos_token_id
    end = [eos] if eos is not None and eos != tokenizer.pad_token_id else []
    return [prompt_ids[p] + r + end for p, r in zip(prompt_texts, response_ids)]


def left_padded(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), [N, longest]: each row's tokens at the right end."""
    N, L = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((N, L), pad_id, dtype=torch.long)
    attn = torch.zeros((N, L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
        attn[i, L - len(s):] = 1
    return ids.to(device), attn.to(device)


def sequence_scores(model, seqs: list[list[int]], pad_id: int, min_shared: int = 16) -> torch.Tensor:
    """r for each token sequence, [N] (gradients flow when enabled). Rows are left-padded;
    position ids count real tokens only. A first stretch shared by all rows (>= min_shared
    tokens) runs once and its KV cache serves every row."""
    device = next(model.parameters()).device
    shared = common_prefix_len(seqs) if len(seqs) > 1 else 0
    if shared < min_shared:
        shared = 0
    N = len(seqs)
    ids, attn = left_padded([s[shared:] for s in seqs], pad_id, device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0) + shared
    if shared:
        base = getattr(model, model.base_model_prefix)
        prefix = torch.tensor([seqs[0][:shared]], dtype=torch.long, device=device)
        cache = output_cache(base(input_ids=prefix, use_cache=True))
        cache.batch_repeat_interleave(N)
        attn = torch.cat([torch.ones((N, shared), dtype=attn.dtype, device=device), attn], dim=1)
        kwargs = {cache_kwarg(model): cache, "use_cache": True}
    else:
        kwargs = {"use_cache": False}
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, **kwargs)
    return out.logits[:, 0].float()


def last_tokens(starts: list[int], ends: list[int]) -> list[int]:
    """For each step end (a character offset, exclusive), the index of the token holding
    character end - 1: the last token that starts before `end` (`starts`: each token's first
    character, non-decreasing)."""
    return [max(bisect_left(starts, e) - 1, 0) for e in ends]


def _decoded_starts(tokenizer, ids: list[int]) -> list[int]:
    """Each token's first character by decoding ever longer prefixes (tokenizers without offsets)."""
    return [len(tokenizer.decode(ids[:k])) for k in range(len(ids))]


def encode_steps(tokenizer, prompt_texts: list[str], completions: list[str],
                 ends: list[list[int]]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids + completion ids, the position of each step's last token in them) for each
    completion, tokenized apart from its prompt as in `encode`; no EOS (nothing is read there)."""
    distinct = list(dict.fromkeys(prompt_texts))
    prompt_ids = dict(zip(distinct, tokenizer(distinct, add_special_tokens=False)["input_ids"])) if distinct else {}
    if not completions:
        return []
    fast = getattr(tokenizer, "is_fast", False)
    enc = tokenizer(list(completions), add_special_tokens=False, return_offsets_mapping=fast)
    out = []
    for i, (prompt, text, step_ends) in enumerate(zip(prompt_texts, completions, ends)):
        ids = enc["input_ids"][i]
        starts = [a for a, _ in enc["offset_mapping"][i]] if fast else _decoded_starts(tokenizer, ids)
        if step_ends and not ids:
            raise ValueError(f"completion {i} has steps but no tokens")
        head = prompt_ids[prompt]
        out.append((head + ids, [len(head) + t for t in last_tokens(starts, step_ends)]))
    return out


def step_logits(model, seqs: list[list[int]], positions: list[list[int]], pad_id: int) -> torch.Tensor:
    """The scalar head at the given positions of each sequence, flattened in order: [total
    steps] (gradients flow when enabled). Rows are left-padded; position ids count real tokens."""
    device = next(model.parameters()).device
    ids, attn = left_padded(seqs, pad_id, device)
    L = ids.shape[1]
    hidden = getattr(model, model.base_model_prefix)(
        input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0), use_cache=False
    ).last_hidden_state
    rows = [i for i, ps in enumerate(positions) for _ in ps]
    cols = [L - len(seqs[i]) + p for i, ps in enumerate(positions) for p in ps]
    picked = hidden[torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long,
                                                                                        device=device)]
    return model.score(picked)[:, 0].float()


def score_step_sequences(model, seqs, positions, pad_id: int, batch_size: int, autocast_fn) -> list[list[float]]:
    """`step_logits` of every sequence without gradients, `batch_size` sequences at a time (similar lengths
    together): one list of head values per sequence."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out: list[list[float]] = [[] for _ in seqs]
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast_fn():
        for start in range(0, len(order), batch_size):
            idx = [i for i in order[start: start + batch_size] if positions[i]]
            if not idx:
                continue
            flat = step_logits(model, [seqs[i] for i in idx], [positions[i] for i in idx], pad_id).tolist()
            for i in idx:
                out[i], flat = flat[: len(positions[i])], flat[len(positions[i]):]
    model.train(was_training)
    return out


def load_reward_backbone(path: str, device: torch.device, layers: int = 0, seed: int = 0, init: str = "pretrained",
                         hidden_size: int = 0, attention: str = "auto"):
    """A sequence-classification model (num_labels=1) from a causal LM or reward model
    directory: its weights (`init="pretrained"`, optionally cut to the first `layers` decoder
    layers) or a fresh model of its architecture and vocabulary (`init="random"`, `layers`
    deep and `hidden_size` wide when given). The scalar head is new unless `path` has one."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_model_path(path)
    config = AutoConfig.from_pretrained(path)
    config.num_labels = 1
    if layers:
        if layers > config.num_hidden_layers and init == "pretrained":
            raise ConfigError(f"model.layers={layers} but {path} has {config.num_hidden_layers} layers; use at most "
                              f"that, or model.init=random")
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):
            config.layer_types = (config.layer_types * layers)[:layers]
    if hidden_size:
        heads = config.num_attention_heads
        if hidden_size % heads:
            raise ConfigError(f"model.hidden_size={hidden_size} must be a multiple of the {heads} attention heads")
        config.hidden_size, config.intermediate_size = hidden_size, 4 * hidden_size
        if getattr(config, "head_dim", None):
            config.head_dim = hidden_size // heads
    torch.manual_seed(seed)  # the new weights' initialisation
    if init == "random":
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    else:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "score.weight newly initialised" is the point, not a warning
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, config=config, dtype=torch.float32)
        finally:
            hf_logging.set_verbosity(verbosity)
    if attention == "auto":
        attention = "eager" if torch.device(device).type == "cpu" else None
    if attention:
        model.set_attn_implementation(attention)
    return model.to(device)


class RewardModel:
    """A trained reward model: `score(prompts, responses)` -> one float per pair.

    `prompts` are questions, rendered with the template the model was trained with;
    `responses` are cut to the part it was trained on (unless `part` is given)."""

    def __init__(self, model, tokenizer, template: str = "none", part: str = "whole", center: float = 0.0,
                 dtype: str = "auto", info: dict | None = None):
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.template, self.part, self.center, self.dtype = template, part, float(center), dtype
        self.info = dict(info or {})
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id
        self.max_tokens = int(getattr(model.config, "max_position_embeddings", 0) or 0)

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device = "auto") -> "RewardModel":
        path = Path(path)
        info_path = path / INFO_FILE
        if not info_path.is_file():
            raise FileNotFoundError(f"{path} is not a reward model made by `thinkrl rm` (no {INFO_FILE}); "
                                    f"train one with `thinkrl rm --config configs/rm-tiny.yaml --out DIR` and "
                                    f"give DIR/model")
        info = json.loads(info_path.read_text())
        dev = resolve_device(device) if isinstance(device, str) else device
        model = load_reward_backbone(str(path), dev)
        tok = load_tokenizer(str(path))
        model.config.pad_token_id = tok.pad_token_id
        return cls(model, tok, info.get("template", "none"), info.get("part", "whole"),
                   info.get("score_center", 0.0), info.get("dtype", "auto"), info)

    def encode(self, prompts: list[str], responses: list[str], part: str | None = None) -> list[list[int]]:
        """Token ids of each (question, response); a sequence longer than the model's context
        keeps its end (the beginning of the prompt is cut)."""
        seqs = encode(self.tokenizer, [render(p, self.template, self.tokenizer) for p in prompts],
                      [response_part(r, part or self.part) for r in responses])
        return [s[-self.max_tokens:] if self.max_tokens and len(s) > self.max_tokens else s for s in seqs]

    def score(self, prompts: list[str], responses: list[str], batch_size: int = 64,
              part: str | None = None) -> list[float]:
        """Raw scores r(x, y), batched (rows of similar length together), without gradients."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        if not prompts:
            return []
        seqs = self.encode([str(p) for p in prompts], list(responses), part)
        return score_sequences(self.model, seqs, self.pad_id, batch_size, lambda: autocast(self.device, self.dtype))

    @property
    def objective(self) -> str:
        """pairwise (an outcome reward model) or step (a process reward model)."""
        return self.info.get("objective", "pairwise")

    def score_steps(self, prompts: list[str], completions: list[str], ends: list[list[int]],
                    batch_size: int = 64) -> list[list[float | None]]:
        """The raw head value at the last token of each step (`ends`: each completion's step ends,
        character offsets), batched, without gradients. A sequence longer than the model's context
        keeps its end; a step that falls in the part cut off gets None."""
        if not len(prompts) == len(completions) == len(ends):
            raise ValueError(f"{len(prompts)} prompts, {len(completions)} completions and {len(ends)} step lists")
        rendered = [render(str(p), self.template, self.tokenizer) for p in prompts]
        encoded = encode_steps(self.tokenizer, rendered, list(completions), ends)
        cut = [max(0, len(s) - self.max_tokens) if self.max_tokens else 0 for s, _ in encoded]
        seqs = [s[c:] for (s, _), c in zip(encoded, cut)]
        kept = [[q - c for q in ps if q >= c] for (_, ps), c in zip(encoded, cut)]
        raw = score_step_sequences(self.model, seqs, kept, self.pad_id, batch_size,
                                   lambda: autocast(self.device, self.dtype))
        return [[None] * (len(ps) - len(r)) + r for (_, ps), r in zip(encoded, raw)]


def score_sequences(model, seqs: list[list[int]], pad_id: int, batch_size: int, autocast_fn) -> list[float]:
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast_fn():
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            for i, v in zip(idx, sequence_scores(model, [seqs[i] for i in idx], pad_id).tolist()):
                out[i] = v
    model.train(was_training)
    return out
