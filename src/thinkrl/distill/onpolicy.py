"""On-policy distillation by reverse KL (`thinkrl distill --on-policy`; beyond the R1 paper,
which distilled by SFT only). The student learns from its own samples, so it is corrected
where it actually goes (Agarwal et al. 2024, "On-Policy Distillation of Language Models:
Learning from Self-Generated Mistakes"; Gu et al. 2024, MiniLLM, for the reverse KL).

One step:

    questions   = the next prompts_per_step questions (seeded order)
    o_1..o_k    ~ π_s(· | q)                     k samples per question from the student
    loss        = 1/|T| Σ_{(i,t) ∈ T} KL_it       T: every completion token of the batch
    KL_it       = Σ_v π_s(v | q, o_i<t) (log π_s(v | q, o_i<t) − log π_t(v | q, o_i<t))

the exact reverse KL KL(π_s || π_t) over the whole vocabulary at every position of the
student's own sample, differentiable in the student, the teacher π_t without gradient. The
sampled prefixes are data (no gradient through the sampling). Both distributions are at
temperature 1; `on_policy.temperature` only changes how the student explores. Comparing
distributions token by token needs one vocabulary: a student with another tokenizer must be
distilled by SFT on text (`thinkrl.distill.run`, mode sft).

A step whose reverse KL or gradient is not finite is skipped and on_policy.max_bad_steps in a
row stop the run (`loop.BadSteps`, as every loop); the run's life (checkpoints, --resume,
Ctrl-C, progress, the final save) is `train.context.TrainingRun`'s.

Writes OUT/metrics.jsonl (reverse_kl per token of each step's batch; eval/reverse_kl,
eval/accuracy and eval/format_rate on held-out prompts every eval.every steps),
OUT/checkpoints/ (thinkrl.checkpoint; --resume continues from the newest), OUT/student/ and
OUT/summary.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..adapters import attach
from ..data import PromptSampler
from .config import DistillConfig, DistillError
from .evaluate import evaluate_model
from .data import load_prompts
from ..metrics import mean, read_metrics
from ..policy import SequenceBatch, autocast, enable_gradient_checkpointing, load_model, load_tokenizer, resolve_device
from ..rewards import get_reward
from ..rollout import SamplingParams, make_engine
from ..template import render
from ..train.context import TrainingRun, gives_threads_back, setup
from ..train.loop import lr_factor, nonfinite_cause

log = logging.getLogger("thinkrl.distill.run")


TEACHER_LOGP_FLOOR = -100.0  # log π_t below this (π_t < 4e-44, or a -inf logit) counts as this


def reverse_kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    """KL(π_s || π_t) = Σ_v π_s(v) (log π_s(v) − log π_t(v)) at every position, [N, C] from
    logits [N, C, V] and a mask [N, C] (masked positions are 0). Exact over the vocabulary,
    differentiable in the student; the teacher's logits are detached. Terms with π_s(v) = 0
    count 0 (the limit of p log p), even where π_t(v) = 0 too.

    A token the teacher forbids (a -inf logit, π_t = 0) makes the true KL infinite wherever
    the student gives it any mass, and its gradient NaN. Its log π_t is clamped to
    TEACHER_LOGP_FLOOR instead: the KL against a teacher that gives it e^-100, so the term
    is finite (at most π_s(v) (100 + log π_s(v))), about 0 where the student already avoids
    the token, and its gradient pushes the student off it. Teachers' real log-probs lie far
    above the floor, so nothing else changes."""
    logp_s = torch.log_softmax(student_logits.float(), dim=-1)
    logp_t = torch.log_softmax(teacher_logits.detach().float(), dim=-1).clamp_min(TEACHER_LOGP_FLOOR)
    p_s = logp_s.exp()
    counted = p_s > 0  # where π_s = 0 (a -inf student logit) log π_s is kept out of the product, and its gradient
    logp_s = torch.where(counted, logp_s, torch.zeros_like(logp_s))
    terms = torch.where(counted, p_s * (logp_s - logp_t), torch.zeros_like(p_s))
    return torch.where(mask.bool(), terms.sum(-1), torch.zeros((), device=terms.device))


def completion_logits(model, batch: SequenceBatch) -> torch.Tensor:
    """Logits predicting each completion token, [N, C, V] (the rollout layout of `policy`)."""
    C = batch.completion_ids.shape[1]
    pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos,
                use_cache=False, logits_to_keep=C + 1)
    return out.logits[:, :-1]


def check_same_vocabulary(student_tok, teacher_tok, student: str, teacher: str) -> None:
    """Fail at start, saying what to do, when the two tokenizers differ."""
    s, t = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s != t:
        differ = len(set(s.items()) ^ set(t.items()))
        raise DistillError(
            f"on-policy distillation compares the student's and the teacher's next-token distributions token by "
            f"token, so they must share one tokenizer; student {student} has a {len(s)}-token vocabulary and "
            f"teacher {teacher} a {len(t)}-token one ({differ} entries differ). Use SFT distillation instead "
            f"(drop --on-policy, or set mode=sft): it trains on the teacher's text re-tokenized by the student.")


def _output_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


class OnPolicyDistiller(TrainingRun):
    """On-policy distillation; the run's life (checkpoints, resume, stop, progress, final save)
    is `TrainingRun`'s."""

    desc, final_name = "distill", "student"
    live = (("acc", "train/accuracy", "{:.2f}"), ("len", "completion_len", "{:.0f}"), ("kl", "reverse_kl", "{:.4f}"),
            ("eval", "eval/accuracy", "{:.3f}"))

    @setup
    def __init__(self, cfg: DistillConfig, out: Path, resume: bool = False):
        self.cfg, op = cfg, cfg.on_policy
        self.begin(out, cfg.run.seed, cfg.run.threads, op.max_bad_steps, lr="on_policy.lr",
                   clip="on_policy.max_grad_norm", limit="on_policy.max_bad_steps")
        self.tok = load_tokenizer(cfg.student.tokenizer or cfg.student.path)
        check_same_vocabulary(self.tok, load_tokenizer(cfg.teacher.tokenizer or cfg.teacher.path),
                              cfg.student.path, cfg.teacher.path)
        self.device, self.teacher_device = resolve_device(cfg.student.device), resolve_device(cfg.teacher.device)
        self.student = attach(load_model(cfg.student.path, self.device), cfg.student.lora)  # student.lora.r > 0
        self.student.train()
        if op.gradient_checkpointing:
            enable_gradient_checkpointing(self.student, "on_policy.gradient_checkpointing")
        self.teacher = load_model(cfg.teacher.path, self.teacher_device, requires_grad=False)
        # vocabularies padded past the tokenizer (common for GPUs) are cut to the real tokens
        self.V = len(self.tok)
        if min(_output_size(self.student), _output_size(self.teacher)) < self.V:
            raise DistillError(f"a model has fewer outputs than its tokenizer's {self.V} tokens")
        context = min(getattr(m.config, "max_position_embeddings", None) or 10**9 for m in (self.student, self.teacher))
        rows, held = load_prompts(cfg.data, cfg.eval.size)
        self.rows, self.prompts = self._fit(rows, context, "training")
        self.held, self.held_prompts = self._fit(held, context, "held-out") if held else ([], [])
        self.engine = make_engine("hf", self.student, self.tok, self.device)
        self.optimizer = torch.optim.AdamW([p for p in self.student.parameters() if p.requires_grad], lr=op.lr,
                                           weight_decay=0.0)  # with LoRA: the adapters'
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(  # a linear warm-up, then constant
            self.optimizer, lambda i: lr_factor(i, op.steps, op.warmup_steps, "constant"))
        self.sampler = PromptSampler(len(self.rows), cfg.run.seed)
        self.generator = torch.Generator().manual_seed(cfg.run.seed)
        self.track(self.student, self.tok, self.optimizer, self.scheduler, self.sampler, self.generator,
                   keep=op.keep_checkpoints)
        self.open(resume)  # config.yaml is distill's (thinkrl.distill.run)

    def _fit(self, rows: list[dict], context: int, what: str) -> tuple[list[dict], list[list[int]]]:
        """The rows whose prompt plus on_policy.max_new_tokens fits both models, with their ids."""
        limit = context - self.cfg.on_policy.max_new_tokens
        ids = [self.tok(render(r["question"], self.cfg.data.template, self.tok), add_special_tokens=False)["input_ids"]
               for r in rows]
        keep = [i for i, p in enumerate(ids) if len(p) <= limit]
        if not keep:
            raise DistillError(f"no {what} prompt fits the models' context of {context} tokens with "
                               f"on_policy.max_new_tokens={self.cfg.on_policy.max_new_tokens}")
        if len(keep) < len(rows):
            log.warning("on-policy: skipped %d %s prompts too long for the context", len(rows) - len(keep), what)
        return [rows[i] for i in keep], [ids[i] for i in keep]

    # ------------------------------------------------------------------ the loss
    def kl_sum(self, batch: SequenceBatch, grad: bool, normaliser: float = 1.0) -> float:
        """Σ of KL_it over the batch's completion tokens, in micro-batches; with `grad`, the
        gradient of Σ KL_it / normaliser is accumulated into the student."""
        total, micro = 0.0, self.cfg.on_policy.micro_batch_size
        for i in range(0, len(batch), micro):
            mb = batch.slice(slice(i, i + micro))
            with torch.set_grad_enabled(grad), autocast(self.device, self.cfg.student.dtype):
                s_logits = completion_logits(self.student, mb)[..., : self.V]
            with torch.no_grad(), autocast(self.teacher_device, self.cfg.teacher.dtype):
                t_batch = mb if self.teacher_device == self.device else SequenceBatch(
                    *(x.to(self.teacher_device) for x in (mb.input_ids, mb.attention_mask, mb.completion_ids,
                                                          mb.completion_mask)), mb.prompt_len)
                t_logits = completion_logits(self.teacher, t_batch)[..., : self.V].to(self.device)
            kl = reverse_kl_per_token(s_logits, t_logits, mb.completion_mask).sum()
            if grad:
                (kl / normaliser).backward()
            total += kl.item()
        return total

    def _sample(self, prompts: list[list[int]], n: int, temperature: float, generator) -> tuple:
        op = self.cfg.on_policy
        params = SamplingParams(n=n, temperature=temperature, top_p=op.top_p, max_new_tokens=op.max_new_tokens,
                                stop=list(op.stop))
        ro = self.engine.generate(prompts, params, generator=generator)
        return ro, SequenceBatch.build(ro.prompt_ids, ro.completion_ids, self.engine.pad_id, self.device)

    def train_step(self) -> dict:
        op, t0 = self.cfg.on_policy, time.perf_counter()
        idx = self.sampler.next(op.prompts_per_step)
        ro, batch = self._sample([self.prompts[i] for i in idx], op.samples_per_prompt, op.temperature,
                                 self.generator)  # o ~ π_s
        n_tok = int(batch.completion_mask.sum())
        self.optimizer.zero_grad(set_to_none=True)
        kl = self.kl_sum(batch, grad=True, normaliser=n_tok)  # loss = mean over the batch's completion tokens
        norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), op.max_grad_norm or float("inf"))
        cause = nonfinite_cause(kl / max(n_tok, 1), float(norm))
        self.update_or_skip(cause)  # never a NaN/inf update; the schedule counts the step
        rows = [self.rows[i] for i in idx for _ in range(op.samples_per_prompt)]
        m = {"step": self.step, "reverse_kl": kl / max(n_tok, 1), "grad_norm": float(norm),
             "lr": self.scheduler.get_last_lr()[0], "completion_len": n_tok / len(ro),
             "truncated_frac": mean([float(f == "length") for f in ro.finish_reasons]),
             "train/format_rate": mean(get_reward("format")(ro.texts)), "skipped": int(bool(cause))}
        if all("answer" in r for r in rows):
            m["train/accuracy"] = mean(get_reward("accuracy")(ro.texts, answer=[r["answer"] for r in rows]))
        m["step_seconds"] = time.perf_counter() - t0
        return m

    def evaluate(self) -> dict:
        """Held-out: the reverse KL per token on the student's own samples (temperature 1, one
        per prompt, a fixed seed) and accuracy / format rate by the R1 protocol."""
        if not self.held:
            return {}
        _, batch = self._sample(self.held_prompts, 1, 1.0, torch.Generator().manual_seed(self.cfg.run.seed + 7))
        was_training = self.student.training
        self.student.eval()
        try:
            kl = self.kl_sum(batch, grad=False) / max(int(batch.completion_mask.sum()), 1)
        finally:
            self.student.train(was_training)
        m = evaluate_model(self.student, self.tok, self.held, self.cfg, self.cfg.on_policy.stop, self.cfg.run.seed + 1)
        return {"eval/reverse_kl": kl, **{k: m[k] for k in ("eval/accuracy", "eval/format_rate", "eval/completion_len")}}

    # ------------------------------------------------------------------ the loop
    @gives_threads_back
    def run(self) -> dict:
        cfg, op = self.cfg, self.cfg.on_policy
        first = (lambda: {"step": 0, **self.evaluate()}) if self.held else None
        error = self.drive(self._logged_step, op.steps, op.save_every, first=first, show=cfg.run.progress)
        if not self.interrupted:
            self.save_final()
        history = read_metrics(self.run_dir)  # a resumed run's earlier steps included
        evals = [h for h in history if "eval/accuracy" in h]
        first_eval, last_eval = (evals[0], evals[-1]) if evals else ({}, {})
        newest = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
        return self.save_summary({
            "mode": "on_policy", "teacher": cfg.teacher.path, "student": cfg.student.path, "steps": self.step,
            "train_prompts": len(self.rows), "eval_prompts": len(self.held),
            "reverse_kl_first_step": next((h["reverse_kl"] for h in history if "reverse_kl" in h), None),
            "reverse_kl_last_step": history[-1].get("reverse_kl") if history else None,
            **{f"{k.split('/')[1]}_{when}": d.get(k) for when, d in (("start", first_eval), ("end", last_eval))
               for k in ("eval/reverse_kl", "eval/accuracy", "eval/format_rate")},
            "final_checkpoint": str(newest) if newest else None,
            "student_dir": None if self.interrupted else str(self.run_dir / "student"),
            "interrupted": self.interrupted, "error": error,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "seconds": round(self.wall(), 1),
        })

    def _logged_step(self) -> tuple[dict, dict]:
        """One step and the held-out evaluation when due: the metrics line (shown as it is)."""
        m, every = self.train_step(), self.cfg.eval.every
        if self.cfg.eval.size and ((every and self.step % every == 0) or self.step == self.cfg.on_policy.steps):
            m.update(self.evaluate())
        return m, m


def run_on_policy(cfg: DistillConfig, out: Path, resume: bool = False) -> dict:
    return OnPolicyDistiller(cfg, out, resume).run()
