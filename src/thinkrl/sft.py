"""Supervised fine-tuning of any causal LM: R1's stage 1 (cold start), stage 3 (SFT on
rejection-sampled data) and distillation (a student trained on a teacher's text).

The loss is the negative log-likelihood of the response tokens only (the prompt and the
chat scaffolding are context, not targets), averaged over every response token of the
optimizer step:

    L(θ) = − 1/|T| Σ_{(i,t) ∈ T} log π_θ(y_{i,t} | x_i, y_{i,<t})     T = response tokens of the batch

The normaliser |T| is the whole batch's, so gradient accumulation over micro-batches gives
the gradient of one big batch. One step, in order:

    samples = the next batch_size samples of the epoch's seeded order
    for each micro-batch: (pack ->) forward -> summed NLL / |T| -> backward
    clip the gradient, AdamW step, learning-rate schedule; log; checkpoint every save_every

Two ways to spend less compute, both exact (tested against each sample run alone):
- packing (train.packing): several samples in one row, position ids restarting at 0 for
  each; with no 2D attention mask, transformers turns restarting positions into a
  block-diagonal causal mask (checked against the loaded model at start). It removes
  padding, so it pays when sample lengths vary widely (long and short chains of thought:
  1.7x on a mixed-length set), but the attention then spans whole rows.
- shared prefix (train.share_prefix, unpacked rows): the micro-batch's common unscored
  head (the R1-Zero template up to the question) runs once and its KV cache serves every
  row, as in `policy.completion_logprobs`: 2x on the embedded task, where packing gains
  nothing (its samples are 115-142 tokens, 84 of them the template's head).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .config import ConfigError, load_into, to_yaml
from .data import DataError, PromptSampler
from .policy import (autocast, cache_kwarg, load_model, load_tokenizer, output_cache, resolve_device,
                     save_pretrained)
from .loop import StopRequest, lr_factor
from .rundir import run_claimed, write_text_atomic
from .sft_data import IGNORE, Batch, encode_rows, pack, pad_batch, read_rows, split_rows

log = logging.getLogger("thinkrl")


@dataclass
class SFTModelConfig:
    path: str = "embedded"  # "embedded", a local directory or a hub id
    tokenizer: str | None = None  # None = path (a distillation student keeps its own tokenizer)
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 autocast on CUDA; or float32 / bfloat16
    device: str = "auto"


@dataclass
class SFTDataConfig:
    train: str | None = None  # JSONL of {prompt, response} or {messages} rows (required)
    eval: str | None = None  # JSONL held-out set, or None
    eval_fraction: float = 0.0  # held out of train (seeded) when eval is None; 0 = no held-out loss
    template: str = "r1_zero"  # for prompt rows: r1_zero | chat | none | a string with {prompt}
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    max_length: int | None = None  # tokens per sample, longer ones skipped and counted; None = model context
    on_bad_row: str = "error"  # error (file:line) | skip (counted)


@dataclass
class SFTOptimConfig:
    lr: float = 1e-4  # R1 distillation: 1e-4 (1.5B student) down to 2e-5 (70B)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = 1.0  # 0 = no clipping
    warmup_steps: int = 0
    warmup_ratio: float = 0.03  # of all steps, when warmup_steps is 0
    schedule: str = "cosine"  # constant | linear | cosine (after warm-up)


@dataclass
class SFTTrainConfig:
    epochs: int = 2  # R1 stage 3: 2 epochs
    batch_size: int = 64  # samples per optimizer step (R1 distillation: 64)
    micro_batch_size: int = 8  # samples per forward/backward; gradient accumulation beyond
    packing: bool = False  # several samples per row, attention kept inside each
    pack_length: int | None = None  # tokens per packed row; None = data.max_length
    share_prefix: bool = True  # unpacked: run a micro-batch's common prompt head once (exact; ~2x on r1_zero data)
    seed: int = 0
    save_every: int = 200  # steps; 0 = at the end only
    keep_checkpoints: int = 2
    eval_every: int = 0  # held-out loss every N steps (and at start and end); 0 = start and end only
    threads: int = 0  # CPU threads for torch; 0 = torch's default
    log_every: int = 1  # a metrics line every N steps (loss averaged over them)
    progress: bool = True


@dataclass
class SFTConfig:
    model: SFTModelConfig = field(default_factory=SFTModelConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    optim: SFTOptimConfig = field(default_factory=SFTOptimConfig)
    train: SFTTrainConfig = field(default_factory=SFTTrainConfig)


def validate_sft(cfg: SFTConfig) -> None:
    d, o, t = cfg.data, cfg.optim, cfg.train
    errors = []

    def need(cond, msg):
        if not cond:
            errors.append(msg)

    need(d.train is not None, "data.train is not set: give the training JSONL, e.g. --config FILE.yaml or "
         "data.train=PATH.jsonl")
    need(0 <= d.eval_fraction < 1, f"data.eval_fraction={d.eval_fraction} must be in [0, 1)")
    need(not (d.eval and d.eval_fraction > 0), "data.eval and data.eval_fraction are both set: use one held-out "
         "set (data.eval_fraction=0 with a data.eval file, or no data.eval)")
    need(d.template in ("r1_zero", "chat", "none") or "{prompt}" in d.template,
         f"data.template={d.template!r}: use r1_zero, chat, none, or a string containing {{prompt}}")
    need(d.max_length is None or d.max_length >= 2, f"data.max_length={d.max_length} must be >= 2 tokens (or null)")
    need(d.on_bad_row in ("error", "skip"), f"data.on_bad_row={d.on_bad_row!r}: use error or skip")
    need(all((d.prompt_field, d.response_field, d.messages_field)), "data.*_field names must not be empty")
    need(o.lr > 0, f"optim.lr={o.lr} must be positive")
    need(o.weight_decay >= 0, "optim.weight_decay must be >= 0")
    need(all(0 <= b < 1 for b in o.betas), f"optim.betas={list(o.betas)} must each be in [0, 1)")
    need(o.max_grad_norm >= 0, "optim.max_grad_norm must be >= 0 (0 turns clipping off)")
    need(o.warmup_steps >= 0 and 0 <= o.warmup_ratio < 1, "optim.warmup_steps must be >= 0 and optim.warmup_ratio "
         "in [0, 1)")
    need(o.schedule in ("constant", "linear", "cosine"), f"optim.schedule={o.schedule!r}: use constant, linear or "
         "cosine")
    need(t.epochs >= 1, f"train.epochs={t.epochs}: train for at least 1 epoch")
    need(t.batch_size >= 1 and t.micro_batch_size >= 1, "train.batch_size and train.micro_batch_size must be >= 1")
    if t.batch_size >= 1 and t.micro_batch_size >= 1 and t.batch_size % t.micro_batch_size:
        divisors = [k for k in range(1, t.batch_size + 1) if t.batch_size % k == 0 and k <= t.micro_batch_size]
        errors.append(f"train.batch_size={t.batch_size} is not divisible by train.micro_batch_size="
                      f"{t.micro_batch_size} (samples per step = micro-batches × micro_batch_size); set "
                      f"train.micro_batch_size={divisors[-1]} or another divisor of {t.batch_size}")
    need(t.pack_length is None or t.pack_length >= 2, f"train.pack_length={t.pack_length} must be >= 2 (or null)")
    need(not (t.pack_length and d.max_length and t.pack_length < d.max_length),
         f"train.pack_length={t.pack_length} is shorter than data.max_length={d.max_length}, so the longest samples "
         f"could not be packed; raise train.pack_length or lower data.max_length")
    need(t.save_every >= 0 and t.eval_every >= 0, "train.save_every and train.eval_every must be >= 0")
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1")
    need(t.log_every >= 1, "train.log_every must be >= 1")
    need(t.threads >= 0, "train.threads must be >= 0 (0 = torch's default)")
    need(cfg.model.dtype in ("auto", "float32", "bfloat16"), f"model.dtype={cfg.model.dtype!r}: use auto, float32 "
         "or bfloat16")
    if errors:
        raise ConfigError("invalid SFT configuration:\n  - " + "\n  - ".join(errors))


def load_sft_config(path: str | None = None, overrides: list[str] | None = None) -> SFTConfig:
    """Defaults, then the YAML file, then `section.key=value` overrides; then validation."""
    cfg = load_into(SFTConfig(), path, overrides)
    validate_sft(cfg)
    return cfg


# ---------------------------------------------------------------------------- the loss


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
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def batch_nll(model, batch: Batch) -> torch.Tensor:
    """Summed NLL of a batch's response tokens. Only the positions that predict a response
    token go through the LM head (`logits_to_keep`), which spares the vocabulary projection
    of every prompt token. With `batch.prefix_len` the common prefix runs once and its KV
    cache (gradient included) serves every row, as `policy.completion_logprobs` does for a
    group's shared prompt. Both equal masked_lm_loss on the full logits (tested)."""
    targets = batch.labels[:, 1:]  # targets[:, j] is predicted by the logits at position j
    P = batch.prefix_len
    kwargs = dict(use_cache=False)
    nll = 0.0
    if P:
        head = model(input_ids=batch.input_ids[:1, :P], position_ids=batch.position_ids[:1, :P], use_cache=True,
                     **({"logits_to_keep": 1} if _keeps_logits(model) else {}))
        cache = output_cache(head)
        cache.batch_select_indices(torch.zeros(len(batch.input_ids), dtype=torch.long, device=targets.device))
        nll = token_nll(head.logits[:, -1].expand(len(targets), -1), targets[:, P - 1])
        kwargs = {"use_cache": True, cache_kwarg(model): cache}
    ids, pos, targets = batch.input_ids[:, P:], batch.position_ids[:, P:], targets[:, P:]
    if _keeps_logits(model):
        keep = (targets != IGNORE).any(0).nonzero().squeeze(1)
        logits = model(input_ids=ids, position_ids=pos, logits_to_keep=keep, **kwargs).logits
        return nll + token_nll(logits, targets[:, keep])
    return nll + token_nll(model(input_ids=ids, position_ids=pos, **kwargs).logits[:, :-1], targets)


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


# ---------------------------------------------------------------------------- the run


class SFTTrainer:
    def __init__(self, cfg: SFTConfig, run_dir: str | Path, resume: bool = False):
        validate_sft(cfg)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        d, t, o = cfg.data, cfg.train, cfg.optim
        if t.threads:
            torch.set_num_threads(t.threads)
        random.seed(t.seed)
        torch.manual_seed(t.seed)
        self.device = resolve_device(cfg.model.device)
        self.tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
        self.model = load_model(cfg.model.path, self.device)
        self.model.train()
        context = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = d.max_length or context or 2048
        if context and self.max_length > context:
            raise ConfigError(f"data.max_length={d.max_length} exceeds the model's context of {context} tokens; set "
                              f"data.max_length={context} or less")
        self.pack_length = t.pack_length or self.max_length
        if t.packing:
            check_packing(self.model, self.device)

        rows, bad = read_rows(d.train, d)
        rows, eval_rows = split_rows(rows, d.eval_fraction, t.seed)
        self.train, enc = self._encode(rows, d.train)
        self.skipped = {"bad_rows": bad + enc["bad_rows"], "too_long": enc["too_long"]}  # counted, in the summary
        if d.eval:
            eval_rows, bad = read_rows(d.eval, d)
        self.eval, enc = self._encode(eval_rows, d.eval or f"{d.train} (held out)") if eval_rows else ([], {})
        if eval_rows:
            self.skipped.update(eval_bad_rows=bad * bool(d.eval) + enc["bad_rows"], eval_too_long=enc["too_long"])
        if not self.train:
            raise DataError(f"{d.train}: no sample is left to train on (skipped: {self.skipped})")
        self.n_targets = [sum(1 for y in labels if y != IGNORE) for _, labels in self.train]

        self.total_samples = t.epochs * len(self.train)
        self.total_steps = -(-self.total_samples // t.batch_size)
        warmup = o.warmup_steps or round(o.warmup_ratio * self.total_steps)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas,
                                           weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: lr_factor(i, self.total_steps, warmup, o.schedule))
        self.sampler = PromptSampler(len(self.train), t.seed)  # the seeded order of each epoch, resumable
        self.step, self.tokens, self.wall_before = 0, 0, 0.0
        self.window = [0.0, 0]  # NLL sum and response tokens since the last metrics line
        self.run_dir.mkdir(parents=True, exist_ok=True)
        from .metrics import MetricsWriter

        self.metrics = MetricsWriter(self.run_dir)
        if not resume and (self.run_dir / "metrics.jsonl").exists():
            log.warning("%s holds an earlier run; starting afresh (use --resume to continue it)", self.run_dir)
            self.metrics.truncate_after(-1)
            for old in ("checkpoints", "final"):  # never resumed from, or mistaken for this run's, later
                shutil.rmtree(self.run_dir / old, ignore_errors=True)
        self.resumed_from = self._resume() if resume else None
        write_text_atomic(self.run_dir / "config.yaml", to_yaml(cfg))  # after a resume that worked, not before

    def _encode(self, rows, source):
        d = self.cfg.data
        return encode_rows(rows, self.tokenizer, d.template, self.max_length, d.on_bad_row, str(source))

    def layout(self, samples) -> Batch:
        pad = self.tokenizer.pad_token_id or 0
        if self.cfg.train.packing:
            return pack(samples, self.pack_length, pad).to(self.device)
        return pad_batch(samples, pad, share_prefix=self.cfg.train.share_prefix).to(self.device)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.sampler.epoch, "position": self.sampler.pos,
                "sampler": self.sampler.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "tokens": self.tokens, "window": list(self.window),
                "wall_seconds": self.wall_before + time.time() - self.t_start,
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def _resume(self):
        found = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
        if found is None:
            log.warning("--resume: no complete checkpoint under %s; starting from step 0", self.run_dir / "checkpoints")
            self.metrics.truncate_after(-1)
            return None
        ckpt.load_weights(self.model, found)
        s = ckpt.load_trainer_state(found)
        self.sampler.load_state_dict(s["sampler"])  # DataError if the training set changed size
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        torch.set_rng_state(s["torch_rng"])
        random.setstate(s["python_rng"])
        if s.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda_rng"])
        self.step, self.tokens, self.window, self.wall_before = s["step"], s["tokens"], s["window"], s["wall_seconds"]
        self.metrics.truncate_after(self.step)
        log.info("resumed from %s (step %d of %d)", found, self.step, self.total_steps)
        return found

    def save(self) -> Path:
        t = self.cfg.train
        return ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, self.model, self.tokenizer,
                                    self.state_dict(), keep=t.keep_checkpoints)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        t = self.cfg.train
        idx = self.sampler.next(min(t.batch_size, self.total_samples - self.step * t.batch_size))
        norm = sum(self.n_targets[i] for i in idx)  # |T|: the whole step's response tokens
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.zero_grad(set_to_none=True)
        nll_sum, tokens = 0.0, 0
        for start in range(0, len(idx), t.micro_batch_size):
            batch = self.layout([self.train[i] for i in idx[start: start + t.micro_batch_size]])
            with autocast(self.device, self.cfg.model.dtype):
                nll = batch_nll(self.model, batch)
            (nll / norm).backward()
            nll_sum += nll.item()
            tokens += batch.n_tokens
        max_norm = self.cfg.optim.max_grad_norm or float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if math.isfinite(nll_sum) and math.isfinite(grad_norm):
            self.optimizer.step()
        else:  # never apply a NaN/inf update
            log.warning("step %d: the loss or gradient is not finite (loss %s, grad norm %s); update skipped",
                        self.step + 1, nll_sum / norm, grad_norm)
        self.scheduler.step()
        self.step += 1
        self.tokens += tokens
        self.window = [self.window[0] + nll_sum, self.window[1] + norm]
        epoch = min(self.step * t.batch_size, self.total_samples) / len(self.train)  # epochs done
        return {"step": self.step, "epoch": round(epoch, 4),
                "lr": lr, "grad_norm": grad_norm, "step_loss": nll_sum / norm, "tokens": self.tokens}

    def eval_loss(self) -> float | None:
        """Mean NLL per response token over the held-out samples."""
        if not self.eval:
            return None
        nll, n, mb = 0.0, 0, self.cfg.train.micro_batch_size
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.cfg.model.dtype):
            for start in range(0, len(self.eval), mb):
                chunk = self.eval[start: start + mb]
                nll += batch_nll(self.model, self.layout(chunk)).item()
                n += sum(sum(1 for y in labels if y != IGNORE) for _, labels in chunk)
        self.model.train()
        return nll / n

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        from tqdm.auto import tqdm


        t = self.cfg.train
        self.t_start = time.time()
        if self.step == 0 and self.eval:
            self.metrics.write({"step": 0, "epoch": 0.0, "eval/loss": self.eval_loss()})
        bar = tqdm(total=self.total_steps, initial=self.step, desc="SFT", unit="step", dynamic_ncols=True,
                   file=sys.stderr, disable=not t.progress, mininterval=0.5)
        stop, last_eval = StopRequest(), None
        try:
            while self.step < self.total_steps and stop.requested is None:
                m = self.train_step()
                done = self.step == self.total_steps
                if done or (t.eval_every and self.step % t.eval_every == 0):
                    m["eval/loss"] = last_eval = self.eval_loss()
                if done or self.step % t.log_every == 0 or "eval/loss" in m:
                    m["loss"] = self.window[0] / self.window[1]  # token-weighted over the window
                    m["time"] = self.wall_before + time.time() - self.t_start
                    m["tokens_per_s"] = self.tokens / max(m["time"], 1e-9)
                    self.window = [0.0, 0]
                    self.metrics.write({k: m[k] for k in ("step", "epoch", "loss", "lr", "tokens", "grad_norm",
                                                          "tokens_per_s", "time", "eval/loss") if k in m})
                live = f"loss={m['step_loss']:.4f} lr={m['lr']:.2e}"
                bar.set_postfix_str(live + (f" eval={last_eval:.4f}" if last_eval is not None else ""), refresh=False)
                bar.update(1)
                if done or stop.requested or (t.save_every and self.step % t.save_every == 0):
                    self.save()
        finally:
            stop.restore()
            bar.close()
        interrupted = self.step < self.total_steps
        final = None if interrupted else self._write_final()
        return self._summary(final, interrupted)

    def _write_final(self) -> Path:
        """RUN/final: the model and tokenizer in Hugging Face format, written then renamed."""
        final, tmp = self.run_dir / "final", self.run_dir / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_pretrained(self.model, self.tokenizer, tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final

    def _summary(self, final: Path | None, interrupted: bool) -> dict:
        from .metrics import read_metrics

        rows = read_metrics(self.run_dir)
        train_rows = [r for r in rows if r.get("loss") is not None]
        tail = [r for r in train_rows if r["step"] > self.step - max(1, self.total_steps // 10)]
        evals = [r for r in rows if r.get("eval/loss") is not None]
        seconds = self.wall_before + time.time() - self.t_start
        summary = {
            "final_dir": str(final) if final else None,
            "train_loss": sum(r["loss"] for r in tail) / len(tail) if tail else None,  # over the last 10% of steps
            "eval_loss": evals[-1]["eval/loss"] if evals and evals[-1]["step"] == self.step else None,
            "eval_loss_start": evals[0]["eval/loss"] if evals and evals[0]["step"] == 0 else None,
            "n_samples": len(self.train), "n_eval": len(self.eval), "skipped": self.skipped,
            "steps": self.step, "total_steps": self.total_steps, "epochs": self.cfg.train.epochs,
            "seconds": round(seconds, 2), "tokens": self.tokens,
            "tokens_per_s": round(self.tokens / max(seconds, 1e-9), 1),
            "interrupted": interrupted, "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "last_checkpoint": str(ckpt.latest_checkpoint(self.run_dir / "checkpoints") or "") or None,
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.metrics.close()
        return summary


def run_sft(cfg: SFTConfig, run_dir: str | Path, resume: bool = False) -> dict:
    """Fine-tune cfg.model on cfg.data into run_dir (see the module docstring); the summary."""
    return SFTTrainer(cfg, run_dir, resume).run()


# ---------------------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="thinkrl sft", description="Supervised fine-tuning on response tokens "
                                "(prompt/response or chat rows, packing, resumable).")
    p.add_argument("--config", help="YAML with sections model, data, optim, train (see configs/sft-tiny.yaml)")
    p.add_argument("--out", help="run directory (default runs/sft-TIME; with --resume the newest runs/sft-*)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the thinkrl run already in --out")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.train=sft.jsonl optim.lr=1e-5")
    args = p.parse_intermixed_args(argv)
    return run_claimed("sft", args, _sft_command)  # the run directory is this run's alone


def _sft_command(args, out: Path, config: str | None) -> int:
    try:
        cfg = load_sft_config(config, args.overrides)
        trainer = SFTTrainer(cfg, out, resume=args.resume)
    except (ConfigError, DataError, OSError) as e:
        print(f"thinkrl sft: {e}", file=sys.stderr)
        return 2
    n_params = sum(q.numel() for q in trainer.model.parameters())
    print(f"thinkrl sft: {cfg.model.path} ({n_params / 1e6:.2f}M parameters) on {trainer.device}; "
          f"{len(trainer.train)} samples ({trainer.skipped}), {len(trainer.eval)} held out; {trainer.total_steps} "
          f"steps of {cfg.train.batch_size} ({cfg.train.epochs} epochs), micro-batch {cfg.train.micro_batch_size}, "
          f"packing {'on, ' + str(trainer.pack_length) + ' tokens/row' if cfg.train.packing else 'off'}; run dir {out}")
    try:
        s = trainer.run()
    except OSError as e:  # a checkpoint that cannot be written (disk full): the previous ones are intact
        print(f"thinkrl sft: {e}; continue with --resume --out {out} once fixed", file=sys.stderr)
        return 1
    if s["interrupted"]:
        print(f"thinkrl sft: stopped at step {s['steps']} of {s['total_steps']}; continue with --resume --out {out}")
        return 130
    ev = f", eval loss {s['eval_loss']:.4f}" if s["eval_loss"] is not None else ""
    print(f"thinkrl sft: done, train loss {s['train_loss']:.4f}{ev}, {s['seconds']:.0f}s; model in {s['final_dir']}")
    return 0


