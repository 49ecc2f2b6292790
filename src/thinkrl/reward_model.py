"""Neural reward models trained on preference pairs: `thinkrl rm`.

DeepSeek-R1's fourth stage (docs/R1-PIPELINE.md, stage 4) scores general prompts with reward
models, helpfulness on the final summary only, harmlessness on the whole response. A reward model
here is a transformers causal LM with its LM head replaced by a scalar head
(`AutoModelForSequenceClassification`, `num_labels=1`), read at the last token of
prompt + response (+ EOS), and trained with the Bradley-Terry loss (Bradley & Terry 1952;
as in InstructGPT, Ouyang et al. 2022, eq. 1):

    P(y_c ≻ y_r | x) = σ(r(x, y_c) − r(x, y_r))
    loss = −E[ log σ(r(x, y_c) − r(x, y_r)) ]

- x is the question rendered with a template (default `none`, the bare question; `r1_zero`
  gives the prompt the policy sees, which cost the tiny model accuracy and time);
- the part of a response that is scored: `whole`, or `summary` (the text after the last
  `</think>`, all of it when there is none), so a summary-scored reward never sees the
  reasoning;
- the sequence is prompt ids + response ids + EOS, left-padded; transformers' sequence
  classification heads read the rightmost non-pad token, which with left padding is the last
  column (tested: a padded row scores what it scores alone);
- prompts in a batch that share a first stretch of tokens (the whole R1-Zero template up
  to "User:") run it once, its KV cache serving every row: 2.5× less work per step for the
  embedded model with the long template, the same scores and gradients (tested).

    thinkrl rm --config configs/rm-tiny.yaml [--out DIR] [section.key=value ...]

writes OUT/model (the HF model + tokenizer + `thinkrl_rm.json`: template, part, held-out
accuracy, training stats), OUT/metrics.jsonl, OUT/config.yaml and OUT/summary.json.
`RewardModel.from_dir(OUT/model)` scores (question, response) pairs; the rewards
`reward_model`, `helpfulness` and `harmlessness` (`thinkrl.rewards.model`) serve it to GRPO.

Synthetic data (`data.train: synthetic:helpfulness` or `synthetic:harmlessness`) comes from
`thinkrl.task.general`, whose preferences a known rule decides; the held-out accuracy is
then also reported against the rule (`test/rule_auc`: how well the score separates the
held-out responses the rule accepts from those it rejects, across prompts).

The defaults (spelled out in configs/rm-tiny.yaml) are the reward models of the tiny R1 pipeline: a fresh 2-layer, 32-wide model (44k
parameters) of the embedded model's architecture and tokenizer learned the synthetic
helpfulness preferences to 0.95-0.97 held-out accuracy in about 75 s on one CPU thread,
where fine-tuning the 1M embedded model reached 0.86 in more time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .config import ConfigError, load_into, to_yaml
from .loop import lr_factor
from .rundir import RunDirError, claim
from .reward_model_data import load_data, rule_metrics, rule_verdicts

log = logging.getLogger("thinkrl.rm")

PARTS = ("whole", "summary")
RULES = ("auto", "none", "helpfulness", "harmlessness")
INFO_FILE = "thinkrl_rm.json"


# ---------------------------------------------------------------------------- config


@dataclass
class RMModelConfig:
    path: str = "embedded"  # the model to start from ("embedded", a directory, a hub id); with init=random, whose
    #                         architecture and vocabulary a fresh model takes
    tokenizer: str | None = None  # defaults to `path`
    init: str = "random"  # pretrained: path's weights (LM head replaced) | random: a fresh model sized below
    layers: int = 2  # pretrained: keep the first N decoder layers; random: N layers; 0 = as many as path has
    hidden_size: int = 32  # random only: the width (MLP 4×, path's head count); 0 = path's
    template: str = "none"  # how a question becomes the prompt the RM reads (thinkrl.template.render): the bare
    #                         question; r1_zero (the policy's prompt) put 85 uninformative tokens in front and cost
    #                         the tiny model 0.953 -> 0.900 held-out accuracy at twice the time
    attention: str = "auto"  # transformers attention: auto (eager on CPU, where it made tiny-model steps ~30% faster
    #                          than sdpa; the model's default elsewhere) | eager | sdpa
    device: str = "auto"
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 autocast on CUDA; or float32 / bfloat16


@dataclass
class RMDataConfig:
    train: str = "synthetic:helpfulness"  # JSONL of {prompt, chosen, rejected}, or synthetic:helpfulness|harmlessness
    test: str = "synthetic"  # JSONL | synthetic (held-out synthetic pairs) | split (test_share of train) | none
    part: str = "whole"  # what of a response is scored: whole | summary (after the last </think>)
    rule: str = "auto"  # rule to check held-out scores against: helpfulness | harmlessness | none | auto (synthetic's)
    synthetic_train: int = 10000  # pairs made for synthetic:...
    synthetic_test: int = 300
    synthetic_seed: int = 0
    test_share: float = 0.1  # for test: split
    max_tokens: int = 0  # longer pairs are skipped (counted); 0 = the model's context
    on_bad_row: str = "error"  # a malformed line: error (file:line) | skip (counted)


@dataclass
class RMTrainConfig:
    steps: int = 1500
    batch_size: int = 32  # pairs per step (2× as many sequences)
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    schedule: str = "cosine"  # constant | linear | cosine (after warm-up)
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int = 0  # CPU threads for torch; 0 = leave torch's default
    eval_every: int = 250  # held-out accuracy every N steps (and at the end); 0 = at the end only
    eval_batch_size: int = 256  # sequences per scoring forward


@dataclass
class RMLogConfig:
    progress: bool = True
    tensorboard: bool = False
    wandb_project: str | None = None


@dataclass
class RMConfig:
    model: RMModelConfig = field(default_factory=RMModelConfig)
    data: RMDataConfig = field(default_factory=RMDataConfig)
    train: RMTrainConfig = field(default_factory=RMTrainConfig)
    log: RMLogConfig = field(default_factory=RMLogConfig)


def validate(cfg: RMConfig) -> None:
    from .template import render

    errors = []
    d, t, m = cfg.data, cfg.train, cfg.model

    def need(cond, msg):
        if not cond:
            errors.append(msg)

    need(d.part in PARTS, f"data.part {d.part!r}: use whole (the response, reasoning included) or summary "
         "(the text after the last </think>)")
    need(d.rule in RULES, f"data.rule {d.rule!r}: use one of {', '.join(RULES)}")
    synthetic = d.train.startswith("synthetic:")
    need(not synthetic or d.train in ("synthetic:helpfulness", "synthetic:harmlessness"),
         f"data.train {d.train!r}: the synthetic sets are synthetic:helpfulness and synthetic:harmlessness")
    need(bool(d.train.strip()), "data.train is empty: give a JSONL of {prompt, chosen, rejected} or "
         "synthetic:helpfulness")
    need(d.test != "synthetic" or synthetic, "data.test=synthetic needs a synthetic data.train; give a JSONL path, "
         "split or none")
    need(d.synthetic_train >= 1 and d.synthetic_test >= 1, "data.synthetic_train and data.synthetic_test must be >= 1")
    need(0 < d.test_share < 1, f"data.test_share={d.test_share} must be in (0, 1)")
    need(d.max_tokens >= 0, "data.max_tokens must be >= 0 (0 = the model's context)")
    need(d.on_bad_row in ("error", "skip"), f"data.on_bad_row {d.on_bad_row!r}: use error or skip")
    need(t.steps >= 1, "train.steps must be >= 1")
    need(t.batch_size >= 1, "train.batch_size (pairs per step) must be >= 1")
    need(t.eval_batch_size >= 1, "train.eval_batch_size must be >= 1")
    need(t.lr > 0, "train.lr must be positive")
    need(t.weight_decay >= 0, "train.weight_decay must be >= 0")
    need(t.warmup_steps >= 0, "train.warmup_steps must be >= 0")
    need(t.schedule in ("constant", "linear", "cosine"),
         f"train.schedule {t.schedule!r}: use constant, linear or cosine")
    need(t.max_grad_norm >= 0, "train.max_grad_norm must be >= 0 (0 turns clipping off)")
    need(t.eval_every >= 0, "train.eval_every must be >= 0 (0 = at the end only)")
    need(t.threads >= 0, "train.threads must be >= 0 (0 = torch's default)")
    need(m.layers >= 0, "model.layers must be >= 0 (0 keeps every layer)")
    need(m.init in ("pretrained", "random"), f"model.init {m.init!r}: use pretrained (the weights of model.path) or "
         "random (a fresh model of its architecture)")
    need(m.hidden_size >= 0, "model.hidden_size must be >= 0 (0 = model.path's)")
    need(not (m.hidden_size and m.init != "random"),
         "model.hidden_size resizes a fresh model only; set model.init=random or model.hidden_size=0")
    need(m.dtype in ("auto", "float32", "bfloat16"), f"model.dtype {m.dtype!r}: use auto, float32 or bfloat16")
    need(m.attention in ("auto", "eager", "sdpa"), f"model.attention {m.attention!r}: use auto, eager or sdpa")
    if m.template != "chat":
        try:
            render("q", m.template)
        except ValueError as e:
            errors.append(f"model.template: {e}")
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))


def load_rm_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RMConfig:
    cfg = load_into(RMConfig(), path, overrides)
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------------- the loss


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """−mean log σ(r_c − r_r): the negative log-likelihood of the preferences under the
    Bradley-Terry model (InstructGPT eq. 1). logsigmoid keeps it finite for large margins."""
    return -torch.nn.functional.logsigmoid(r_chosen - r_rejected).mean()


def pairwise_accuracy(r_chosen, r_rejected) -> float:
    """Share of pairs whose chosen response scores higher; a tie counts half."""
    c, r = torch.as_tensor(r_chosen, dtype=torch.float64), torch.as_tensor(r_rejected, dtype=torch.float64)
    if c.numel() == 0:
        return float("nan")
    return float(((c > r).double() + 0.5 * (c == r).double()).mean())


def response_part(text: str, part: str) -> str:
    """The part of a response a reward model reads: all of it, or the summary."""
    from .task.general import summary_of

    if part == "whole":
        return text
    if part == "summary":
        return summary_of(text)
    raise ValueError(f"part {part!r}: use whole or summary")


# ---------------------------------------------------------------------------- scoring


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


def sequence_scores(model, seqs: list[list[int]], pad_id: int, min_shared: int = 16) -> torch.Tensor:
    """r for each token sequence, [N] (gradients flow when enabled). Rows are left-padded;
    position ids count real tokens only. A first stretch shared by all rows (>= min_shared
    tokens) runs once and its KV cache serves every row."""
    from .policy import cache_kwarg, common_prefix_len, output_cache

    device = next(model.parameters()).device
    shared = common_prefix_len(seqs) if len(seqs) > 1 else 0
    if shared < min_shared:
        shared = 0
    rest = [s[shared:] for s in seqs]
    N, L = len(rest), max(len(s) for s in rest)
    ids = torch.full((N, L), pad_id, dtype=torch.long)
    attn = torch.zeros((N, L), dtype=torch.long)
    for i, s in enumerate(rest):
        ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
        attn[i, L - len(s):] = 1
    ids, attn = ids.to(device), attn.to(device)
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


def load_reward_backbone(path: str, device: torch.device, layers: int = 0, seed: int = 0, init: str = "pretrained",
                         hidden_size: int = 0, attention: str = "auto"):
    """A sequence-classification model (num_labels=1) from a causal LM or reward model
    directory: its weights (`init="pretrained"`, optionally cut to the first `layers` decoder
    layers) or a fresh model of its architecture and vocabulary (`init="random"`, `layers`
    deep and `hidden_size` wide when given). The scalar head is new unless `path` has one."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from .policy import resolve_model_path

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
        from .policy import load_tokenizer, resolve_device

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
        from .template import render

        seqs = encode(self.tokenizer, [render(p, self.template, self.tokenizer) for p in prompts],
                      [response_part(r, part or self.part) for r in responses])
        return [s[-self.max_tokens:] if self.max_tokens and len(s) > self.max_tokens else s for s in seqs]

    def score(self, prompts: list[str], responses: list[str], batch_size: int = 64,
              part: str | None = None) -> list[float]:
        """Raw scores r(x, y), batched (rows of similar length together), without gradients."""
        from .policy import autocast

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        if not prompts:
            return []
        seqs = self.encode([str(p) for p in prompts], list(responses), part)
        return score_sequences(self.model, seqs, self.pad_id, batch_size, lambda: autocast(self.device, self.dtype))


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


# ---------------------------------------------------------------------------- training


def encode_pairs(tokenizer, pairs: list[dict], template: str, part: str, limit: int, what: str):
    """(pairs kept, [(chosen ids, rejected ids)]): pairs longer than `limit` are dropped (counted)."""
    from .data import DataError
    from .template import render

    prompts = [render(p["prompt"], template, tokenizer) for p in pairs]
    responses = [response_part(p[k], part) for k in ("chosen", "rejected") for p in pairs]
    seqs = encode(tokenizer, prompts + prompts, responses)
    chosen, rejected = seqs[: len(pairs)], seqs[len(pairs):]
    keep = [i for i in range(len(pairs)) if max(len(chosen[i]), len(rejected[i])) <= limit]
    if len(keep) < len(pairs):
        log.warning("%s: skipped %d of %d pairs longer than %d tokens", what, len(pairs) - len(keep), len(pairs), limit)
    if not keep:
        raise DataError(f"{what}: no pair fits in {limit} tokens; raise data.max_tokens or shorten the data")
    return [pairs[i] for i in keep], [(chosen[i], rejected[i]) for i in keep]


class _Batches:
    """Seeded epochs over the pairs: each step takes the next `size` of a permutation."""

    def __init__(self, n: int, size: int, seed: int):
        self.n, self.size, self.order = n, size, []
        self.g = torch.Generator().manual_seed(seed)

    def next(self) -> list[int]:
        idx = []
        while len(idx) < self.size:
            if not self.order:
                self.order = torch.randperm(self.n, generator=self.g).tolist()
            idx.append(self.order.pop())
        return idx


def train_reward_model(cfg: RMConfig, out: str | Path, show_progress: bool | None = None) -> dict:
    """Train, evaluate and save a reward model; returns the summary (also OUT/summary.json)."""
    threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        return _train(cfg, Path(out), show_progress)
    finally:
        torch.set_num_threads(threads)  # the caller's setting again (the pipeline goes on in this process)


def _train(cfg: RMConfig, out: Path, show_progress: bool | None) -> dict:
    from tqdm.auto import tqdm

    from .metrics import MetricsWriter
    from .policy import autocast, load_tokenizer, resolve_device, save_pretrained

    t0 = time.time()
    m, d, t = cfg.model, cfg.data, cfg.train
    device = resolve_device(m.device)
    train, test, rule = load_data(d, t.seed)
    verdicts = rule_verdicts(test, rule) if rule != "none" and test else None
    tok = load_tokenizer(m.tokenizer or m.path)
    model = load_reward_backbone(m.path, device, m.layers, t.seed, m.init, m.hidden_size, m.attention)
    model.config.pad_token_id = tok.pad_token_id
    limit = d.max_tokens or int(getattr(model.config, "max_position_embeddings", 0) or 0) or 10**9
    train, train_enc = encode_pairs(tok, train, m.template, d.part, limit, "train")
    test, test_enc = encode_pairs(tok, test, m.template, d.part, limit, "test") if test else ([], [])
    if verdicts is not None and len(test) < len(verdicts):
        verdicts = rule_verdicts(test, rule)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    metrics = MetricsWriter(out, cfg.log.tensorboard, cfg.log.wandb_project, asdict(cfg))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"thinkrl rm: {m.path if m.init == 'pretrained' else 'fresh'} model ({n_params / 1e6:.3f}M parameters, "
          f"{model.config.num_hidden_layers} layers) on {device}; {len(train)} train / {len(test)} held-out pairs; "
          f"part={d.part}, template={m.template}, rule={rule}; {t.steps} steps × {t.batch_size} pairs; run dir {out}",
          file=sys.stderr)

    def scores(seqs):
        return score_sequences(model, seqs, tok.pad_token_id, t.eval_batch_size, lambda: autocast(device, m.dtype))

    def evaluate() -> dict:
        c, r = scores([e[0] for e in test_enc]), scores([e[1] for e in test_enc])
        res = {"test/accuracy": pairwise_accuracy(c, r), "test/margin": sum(a - b for a, b in zip(c, r)) / len(c)}
        if verdicts is not None:
            res.update({f"test/{k}": v for k, v in rule_metrics(verdicts, c, r).items()})
        return res

    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, t.steps, t.warmup_steps, t.schedule))
    batches = _Batches(len(train_enc), t.batch_size, t.seed)
    bar = tqdm(total=t.steps, desc="RM", unit="step", dynamic_ncols=True, file=sys.stderr, mininterval=0.5,
               disable=not (cfg.log.progress if show_progress is None else show_progress))
    model.train()
    row, evals, t_train = {}, {}, time.time()
    for step in range(1, t.steps + 1):
        idx = batches.next()
        with autocast(device, m.dtype):
            r = sequence_scores(model, [train_enc[i][0] for i in idx] + [train_enc[i][1] for i in idx],
                                tok.pad_token_id)
        r_chosen, r_rejected = r[: len(idx)], r[len(idx):]
        loss = bradley_terry_loss(r_chosen, r_rejected)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: the loss is {loss.item()}; lower train.lr (now {t.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm or float("inf"))
        opt.step()
        sched.step()
        row = {"step": step, "loss": loss.item(), "accuracy": pairwise_accuracy(r_chosen.detach(), r_rejected.detach()),
               "margin": (r_chosen - r_rejected).mean().item(), "grad_norm": float(gnorm), "lr": sched.get_last_lr()[0]}
        if test_enc and ((t.eval_every and step % t.eval_every == 0) or step == t.steps):
            evals = evaluate()
            row.update(evals)
        metrics.write(row)
        bar.set_postfix_str(f"loss={row['loss']:.3f} acc={row['accuracy']:.2f}"
                            + (f" test={evals['test/accuracy']:.3f}" if evals else ""), refresh=False)
        bar.update(1)
    bar.close()
    metrics.close()
    train_seconds = time.time() - t_train
    model.eval()
    # the center c of the rewards' sigmoid(r − c): the mean score of (up to) 256 training pairs' responses
    center = scores([s for e in train_enc[:256] for s in e])
    info = {
        "template": m.template, "part": d.part, "score_center": sum(center) / len(center), "dtype": m.dtype,
        "init": m.init, "init_from": m.path, "layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size, "parameters": n_params, "rule": rule, "train_data": d.train,
        "test_data": d.test if test else "none", "test_accuracy": evals.get("test/accuracy"), "test": evals,
        "train": {"steps": t.steps, "batch_size": t.batch_size, "pairs": len(train), "seconds": round(train_seconds, 1),
                  "final_loss": row.get("loss"), "threads": torch.get_num_threads(), "device": str(device)},
    }
    model_dir = out / "model"
    save_pretrained(model, tok, model_dir)
    (model_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    summary = {**info, "model_dir": str(model_dir), "wall_seconds": round(time.time() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------------------- command line


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="thinkrl rm", description="Train a Bradley-Terry reward model on preference "
                                 "pairs (JSONL of prompt/chosen/rejected, or the synthetic general task).")
    ap.add_argument("--config", help="YAML with model/data/train/log sections (see configs/rm-tiny.yaml)")
    ap.add_argument("--out", help="run directory (default runs/rm-TIMESTAMP)")
    ap.add_argument("--overwrite", action="store_true", help="replace the thinkrl run already in --out")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.part=summary train.steps=200")
    args = ap.parse_intermixed_args(argv)  # overrides anywhere among the flags
    from .data import DataError

    overrides = list(args.overrides) + (["log.progress=false"] if args.no_progress else [])
    try:
        cfg = load_rm_config(args.config, overrides)
    except (ConfigError, OSError) as e:
        print(f"thinkrl rm: {e}", file=sys.stderr)
        return 2
    try:  # the run directory is this run's alone (locked while it runs)
        with claim(args.out, overwrite=args.overwrite, command="rm", prefix="rm-") as run_dir:
            s = train_reward_model(cfg, run_dir.path)
    except (ConfigError, DataError, FloatingPointError, OSError, ValueError, RunDirError) as e:
        print(f"thinkrl rm: {e}", file=sys.stderr)
        return 2
    acc = s.get("test_accuracy")
    extra = ""
    if s["test"].get("test/rule_auc") is not None:
        extra = f", rule AUC {s['test']['test/rule_auc']:.3f}"
    print(f"thinkrl rm: done in {s['train']['seconds']:.0f}s of training; held-out pairwise accuracy "
          f"{'n/a' if acc is None else f'{acc:.3f}'}{extra}; model {s['model_dir']}")
    return 0
