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

A step whose loss or gradient is NaN/inf is skipped (no update; the schedule still counts it) and
train.max_bad_steps of them in a row stop the run: the policy of every loop (`loop.BadSteps`).

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

import logging
import sys
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..adapters import attach
from ..config import ConfigError
from ..config_io import to_yaml
from ..data import DataError, PromptSampler
from ..policy import autocast, enable_gradient_checkpointing, load_model, load_tokenizer, resolve_device
from .context import TrainingRun, gives_threads_back, setup
from .loop import lr_factor, nonfinite_cause
from .sft_config import SFTConfig, load_sft_config, validate_sft
from .sft_loss import batch_nll, check_packing, masked_lm_loss, token_nll
from .sft_data import IGNORE, Batch, encode_rows, pack, pad_batch, read_rows, split_rows

log = logging.getLogger("thinkrl")

# the settings live in thinkrl.train.sft_config, the loss in thinkrl.train.sft_loss; they are importable from here as well
__all__ = ["SFTConfig", "SFTTrainer", "batch_nll", "check_packing", "load_sft_config", "lr_factor", "main",
           "masked_lm_loss", "run_sft", "token_nll", "validate_sft"]


# ---------------------------------------------------------------------------- the run


class SFTTrainer(TrainingRun):
    """SFT; the run's life (checkpoints, resume, stop, progress, final save) is `TrainingRun`'s."""

    desc, final_name, sticky = "SFT", "final", ("eval/loss",)
    live = (("loss", "step_loss", "{:.4f}"), ("lr", "lr", "{:.2e}"), ("eval", "eval/loss", "{:.4f}"))

    @setup
    def __init__(self, cfg: SFTConfig, run_dir: str | Path, resume: bool = False):
        validate_sft(cfg)
        self.cfg = cfg
        d, t, o = cfg.data, cfg.train, cfg.optim
        self.begin(run_dir, cfg.run.seed, cfg.run.threads, t.max_bad_steps)
        self.device = resolve_device(cfg.model.device)
        self.tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
        self.model = attach(load_model(cfg.model.path, self.device), cfg.model.lora)  # model.lora.r > 0: adapters
        self.model.train()
        if t.gradient_checkpointing:  # less activation memory, the same values (sft_loss.batch_nll)
            enable_gradient_checkpointing(self.model)
        context = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = d.max_length or context or 2048
        if context and self.max_length > context:
            raise ConfigError(f"data.max_length={d.max_length} exceeds the model's context of {context} tokens; set "
                              f"data.max_length={context} or less")
        self.pack_length = t.pack_length or self.max_length
        if t.packing:
            check_packing(self.model, self.device)

        rows, bad = read_rows(d.train, d)
        rows, eval_rows = split_rows(rows, d.eval_fraction, cfg.run.seed)
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
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=o.lr,
                                           betas=o.betas, weight_decay=o.weight_decay)  # with LoRA: the adapters'
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: lr_factor(i, self.total_steps, warmup, o.schedule))
        self.sampler = PromptSampler(len(self.train), cfg.run.seed)  # the seeded order of each epoch, resumable
        self.tokens = 0
        self.window = [0.0, 0]  # NLL sum and response tokens since the last metrics line
        self.track(self.model, self.tokenizer, self.optimizer, self.scheduler, self.sampler, keep=t.keep_checkpoints)
        self.open(resume, to_yaml(cfg))

    def _encode(self, rows, source):
        d = self.cfg.data
        return encode_rows(rows, self.tokenizer, d.template, self.max_length, d.on_bad_row, str(source))

    def layout(self, samples) -> Batch:
        pad = self.tokenizer.pad_token_id or 0
        if self.cfg.train.packing:
            return pack(samples, self.pack_length, pad).to(self.device)
        return pad_batch(samples, pad, share_prefix=self.cfg.train.share_prefix).to(self.device)

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict:
        return {"epoch": self.sampler.epoch, "position": self.sampler.pos, "tokens": self.tokens,
                "window": list(self.window)}

    def load_extra_state(self, s: dict) -> None:
        self.tokens, self.window = s["tokens"], s["window"]

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
        cause = nonfinite_cause(nll_sum / norm, grad_norm)
        if not cause:
            self.window = [self.window[0] + nll_sum, self.window[1] + norm]  # the loss of the steps taken
        self.update_or_skip(cause)  # never a NaN/inf update; the schedule counts the step
        self.tokens += tokens
        epoch = min(self.step * t.batch_size, self.total_samples) / len(self.train)  # epochs done
        return {"step": self.step, "epoch": round(epoch, 4),
                "lr": lr, "grad_norm": grad_norm, "step_loss": nll_sum / norm, "tokens": self.tokens,
                "skipped": int(bool(cause))}

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
    @gives_threads_back
    def run(self) -> dict:
        t = self.cfg.train
        first = (lambda: {"step": 0, "epoch": 0.0, "eval/loss": self.eval_loss()}) if self.eval else None
        error = self.drive(self._logged_step, self.total_steps, t.save_every, first=first, show=self.cfg.run.progress)
        final = None if self.interrupted else self.save_final()
        return self._summary(final, self.interrupted, error)

    def _logged_step(self) -> tuple[dict | None, dict]:
        """One step and its evaluation when due; the metrics line every log_every steps, at an
        evaluation, a skipped step and the end (with the token-weighted loss since the last)."""
        t = self.cfg.train
        m = self.train_step()
        done = self.step == self.total_steps
        if done or (t.eval_every and self.step % t.eval_every == 0):
            m["eval/loss"] = self.eval_loss()
        if not (done or self.step % t.log_every == 0 or "eval/loss" in m or m["skipped"]):
            return None, m
        m["loss"] = self.window[0] / self.window[1] if self.window[1] else None  # token-weighted
        m["time"] = self.wall()
        m["tokens_per_s"] = self.tokens / max(m["time"], 1e-9)
        self.window = [0.0, 0]
        keys = ("step", "epoch", "loss", "lr", "tokens", "grad_norm", "tokens_per_s", "time", "eval/loss", "skipped")
        return {k: m[k] for k in keys if k in m}, m

    def _summary(self, final: Path | None, interrupted: bool, error: str | None = None) -> dict:
        from ..metrics import read_metrics

        rows = read_metrics(self.run_dir)
        train_rows = [r for r in rows if r.get("loss") is not None]
        tail = [r for r in train_rows if r["step"] > self.step - max(1, self.total_steps // 10)]
        evals = [r for r in rows if r.get("eval/loss") is not None]
        seconds = self.wall()
        summary = {
            "final_dir": str(final) if final else None,
            "train_loss": sum(r["loss"] for r in tail) / len(tail) if tail else None,  # over the last 10% of steps
            "eval_loss": evals[-1]["eval/loss"] if evals and evals[-1]["step"] == self.step else None,
            "eval_loss_start": evals[0]["eval/loss"] if evals and evals[0]["step"] == 0 else None,
            "n_samples": len(self.train), "n_eval": len(self.eval), "skipped": self.skipped,
            "steps": self.step, "total_steps": self.total_steps, "epochs": self.cfg.train.epochs,
            "seconds": round(seconds, 2), "tokens": self.tokens,
            "tokens_per_s": round(self.tokens / max(seconds, 1e-9), 1),
            "interrupted": interrupted, "error": error,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "last_checkpoint": str(ckpt.latest_checkpoint(self.run_dir / "checkpoints") or "") or None,
        }
        return self.save_summary(summary)


def run_sft(cfg: SFTConfig, run_dir: str | Path, resume: bool = False) -> dict:
    """Fine-tune cfg.model on cfg.data into run_dir (see the module docstring); the summary."""
    return SFTTrainer(cfg, run_dir, resume).run()


# ---------------------------------------------------------------------------- the command


def command(args, out: Path, config: str | None) -> int:
    """`thinkrl sft` in a claimed run directory `out`, with settings from `config` and `args.overrides`."""
    try:
        cfg = load_sft_config(config, args.overrides)
        trainer = SFTTrainer(cfg, out, resume=args.resume)
    except (ValueError, OSError) as e:  # ConfigError, DataError, a checkpoint that does not fit
        print(f"thinkrl sft: {e}", file=sys.stderr)
        return 2
    n_params = sum(q.numel() for q in trainer.model.parameters())
    print(f"thinkrl sft: {cfg.model.path} ({n_params / 1e6:.2f}M parameters) on {trainer.device}; "
          f"{len(trainer.train)} samples ({trainer.skipped}), {len(trainer.eval)} held out; {trainer.total_steps} "
          f"steps of {cfg.train.batch_size} ({cfg.train.epochs} epochs), micro-batch {cfg.train.micro_batch_size}, "
          f"packing {'on, ' + str(trainer.pack_length) + ' tokens/row' if cfg.train.packing else 'off'}; run dir {out}")
    try:
        s = trainer.run()
    except OSError as e:  # the final model cannot be written (disk full): the checkpoints are intact
        print(f"thinkrl sft: {e}; continue with --resume --out {out} once fixed", file=sys.stderr)
        return 1
    if s["error"]:
        print(f"thinkrl sft: {s['error']}", file=sys.stderr)
        return 1
    if s["interrupted"]:
        print(f"thinkrl sft: stopped at step {s['steps']} of {s['total_steps']}; continue with --resume --out {out}")
        return 130
    ev = f", eval loss {s['eval_loss']:.4f}" if s["eval_loss"] is not None else ""
    print(f"thinkrl sft: done, train loss {s['train_loss']:.4f}{ev}, {s['seconds']:.0f}s; model in {s['final_dir']}")
    return 0


