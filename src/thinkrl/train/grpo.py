"""The GRPO trainer. One step, in the order of docs/ALGORITHM.md §One training step:

    questions  = the next prompts_per_step questions
    rollouts   = G samples per question from π_old (the current policy)
    rewards    = the weighted rule rewards of each sample
    advantages = group-relative (objective.group_advantages)
    update     = μ optimizer steps on the GRPO loss (objective.grpo_loss), each over all
                 samples in micro-batches with gradient accumulation
    log, evaluate every N steps, checkpoint every N steps

Data parallel (see `thinkrl.distributed`): the same config runs on one process or many,

    torchrun --nproc_per_node N -m thinkrl.cli train --config my.yaml
    torchrun --nnodes M --nproc_per_node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m thinkrl.cli train --config my.yaml

and learns the same. Every process draws the same questions from the same seeded order and
takes its share (questions rank, rank + W, ...), so train.prompts_per_step must be a
multiple of W. Local to a process: sampling (its own generator, seeded seed + rank *
1_000_003, so process 0 draws what a single process draws), rewards and group advantages
(a group never spans processes), forward and backward passes. Global: the loss normaliser
(completions and tokens counted over all processes), the gradient (summed over processes
after each inner update's backward passes; each process's loss is its part of the whole
batch's sum over the whole batch's normaliser, so the sum is the whole batch's gradient),
gradient clipping and the optimizer step (identical on every process), every decision to
skip (nothing to learn from, a NaN/inf reward, loss or gradient, a stop request) and the
logged metrics (means over all completions). Rank 0 alone evaluates, writes metrics,
checkpoints (holding every process's random streams, so --resume continues each), the
summary and the report, and shows progress; the others wait for it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from .. import distributed
from ..adapters import attach, reference
from ..config import Config, validate_world
from ..data import PromptSampler, load_dataset
from ..evaluation.heldout import evaluate
from .context import gives_threads_back, setup
from .loop import lr_factor, nonfinite_cause
from ..metrics import by_level, has_reflection, mean
from ..objective import Normaliser, grpo_loss
from ..policy import (SequenceBatch, autocast, completion_logprobs, enable_gradient_checkpointing, load_model,
                      load_tokenizer, resolve_device)
from .grpo_batch import StepSampling
from .grpo_state import GRPORun
from ..sharding import clip_grad_norm, gathered, shard_model
from ..template import render

log = logging.getLogger("thinkrl")


def lr_lambda(cfg: Config):
    """The learning-rate multiplier per optimizer step (μ per training step)."""
    total, o = cfg.train.steps * cfg.objective.mu, cfg.optim
    return lambda i: lr_factor(i, total, o.warmup_steps, o.schedule)


class GRPOTrainer(StepSampling, GRPORun):
    """GRPO on one process or many; the run's life (checkpoints, resume, stop, summary) is
    `context.TrainingRun`'s, GRPO's own part of it `grpo_state.GRPORun`'s."""

    @setup
    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False):
        self.cfg, t = cfg, cfg.train
        self.begin(run_dir, cfg.run.seed, cfg.run.threads, t.max_bad_steps, on_checkpoint_error=t.on_checkpoint_error,
                   checkpoint_error_setting="train.on_checkpoint_error")
        # under torchrun: join the process group (one process: nothing changes)
        self.device = distributed.init(resolve_device(cfg.model.device))
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        validate_world(cfg, self.world)
        self.tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
        self.policy = attach(load_model(cfg.model.path, self.device), cfg.model.lora)  # model.lora.r > 0: adapters
        self.policy.train()
        if t.gradient_checkpointing:  # less activation memory, the same values (policy.completion_logprobs)
            enable_gradient_checkpointing(self.policy)
        # β = 0: no reference model at all; with adapters, the policy with them off (no second copy)
        self.ref = reference(self.policy, lambda: load_model(cfg.model.path, self.device, requires_grad=False)) \
            if cfg.objective.beta > 0 else None
        # train.parallel=fsdp under torchrun: parameters, gradients and optimizer state sharded (one process: as is)
        self.sharded = cfg.train.parallel == "fsdp" and self.world > 1
        for model in (self.policy, self.ref) if self.sharded else ():
            if model is not None:
                shard_model(model, self.device)
        self.build_sampling()  # the rollout engine, the rewards (grpo_batch)

        d = cfg.data
        self.train_rows, self.train_prompts = self._prepare(load_dataset(d.train, "train", d.question_field, d.answer_field, d.on_bad_row), "train")
        self.eval_rows, self.eval_prompts = [], []
        if d.eval != "none":
            rows = load_dataset(d.eval, "test", d.question_field, d.answer_field, d.on_bad_row)
            self.eval_rows, self.eval_prompts = self._prepare(rows[: d.eval_size or None], "eval")

        o = cfg.optim
        self.optimizer = torch.optim.AdamW([p for p in self.policy.parameters() if p.requires_grad], lr=o.lr,
                                           betas=o.betas, weight_decay=o.weight_decay)  # with LoRA: the adapters'
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.sampler = PromptSampler(len(self.train_rows), cfg.run.seed)
        self.generator = torch.Generator().manual_seed(cfg.run.seed + self.rank * 1_000_003)  # rank 0: as one process
        self.track(self.policy, self.tokenizer, self.optimizer, self.scheduler, self.sampler, self.generator,
                   keep=t.keep_checkpoints, sharded_optimizer=t.parallel == "fsdp")
        self.open(resume, cfg.to_yaml(), cfg.log.tensorboard, cfg.log.wandb_project, cfg.to_dict())
        self.engine.sync_weights(self.policy)  # an engine with its own copy: the weights --resume loaded

    # ------------------------------------------------------------------ data
    def _prepare(self, rows: list[dict], split: str):
        tmpl, limit = self.cfg.model.template, self.cfg.data.max_prompt_tokens
        kept, prompts, too_long = [], [], 0
        for row in rows:
            ids = self.tokenizer(render(row["question"], tmpl, self.tokenizer), add_special_tokens=False)["input_ids"]
            if len(ids) > limit:
                too_long += 1
                continue
            kept.append(row)
            prompts.append(ids)
        if too_long:
            log.warning("%s: skipped %d of %d questions longer than data.max_prompt_tokens=%d",
                        split, too_long, len(rows), limit)
        if not kept:
            raise ValueError(f"{split}: every question is longer than data.max_prompt_tokens={limit}; raise it")
        return kept, prompts

    # ------------------------------------------------------------------ one step
    def _logprobs(self, model, batch: SequenceBatch, micro: int):
        """No-grad log-probs (π_old, π_ref) in micro-batches."""
        with torch.no_grad(), autocast(self.device, self.cfg.model.dtype):
            return torch.cat([completion_logprobs(model, batch.slice(slice(i, i + micro)), self.cfg.rollout.temperature)
                              for i in range(0, len(batch), micro)])

    def _sync(self) -> None:
        """With --profile on CUDA: wait for the GPU, so that phases are timed precisely."""
        if self.cfg.train.profile and self.device.type == "cuda":
            torch.cuda.synchronize()

    def train_step(self) -> dict:
        cfg = self.cfg
        timing, prof = {}, {}  # timing: every step; prof: the update's parts, with --profile
        t0 = time.perf_counter()

        # 1. G samples per question from π_old (this process's share), 2. rewards, 3. advantages;
        #    with dynamic sampling, more rounds until enough groups carry a signal (grpo_batch)
        s = self.collect()
        rollouts, group_rows, total, per_reward = s.drawn, s.rows, s.total, s.per_reward
        rows = group_rows[:: cfg.rollout.group_size]
        timing.update(s.timing)
        names = list(s.nonfinite)  # NaN/inf counts of the whole batch
        bad = {n: c for n, c in zip(names, distributed.sum_values([s.nonfinite[n] for n in names],
                                                                   dtype=torch.int64)) if c}
        skip_cause = ", ".join(f"reward {n!r} returned NaN/inf for {c} samples" for n, c in bad.items())

        # 4. the update
        if skip_cause:  # never learn from a broken reward signal
            if self.is_main:
                log.warning("step %d skipped: %s", self.step + 1, skip_cause)
            for _ in range(cfg.objective.mu):  # the schedule counts skipped steps too (see update)
                self.scheduler.step()
            timing["logprobs"] = timing["update"] = 0.0
            stats = {"loss": 0.0, "grad_norm": 0.0, "clip_frac": 0.0, "kl": 0.0, "ratio": 1.0}
        else:
            stats = self.update(s.prompt_ids, s.completion_ids, s.advantages, timing, prof, s.group_ids,
                                s.behaviour_logprobs)
            skip_cause = stats["skip_cause"]
        t_sync = time.perf_counter()
        self.engine.sync_weights(self.policy)  # an engine with its own copy (Ray workers) samples the new weights
        timing["sync"] = time.perf_counter() - t_sync
        self.step += 1
        self.bad.record(skip_cause)

        if cfg.objective.ref_reset_every and self.ref is not None and self.step % cfg.objective.ref_reset_every == 0:
            self.ref.load_state_dict(self.policy.state_dict())  # R1: π_ref ← π_θ every 400 steps

        # 5. log: the whole batch's numbers (every process's completions, in rank order)
        lengths = [len(c) for c in rollouts.completion_ids]
        levels = [row.get("level") for row in group_rows] if "level" in rows[0] else [None] * len(group_rows)
        batch = self._whole_batch(total=total, lengths=lengths, levels=levels, zero_std=s.zero_std,
                                  truncated=[float(f == "length") for f in rollouts.finish_reasons],
                                  reflection=[float(has_reflection(t)) for t in rollouts.texts],
                                  **{f"rewards/{name}": values for name, values in per_reward.items()})
        total, lengths = batch["total"], batch["lengths"]
        failed = {**(self.rewards.errors if self.rewards else {}), **(self.step_rewards.errors if self.step_rewards else {})}
        errors = dict(zip(per_reward, distributed.sum_values([failed[n] for n in per_reward], dtype=torch.int64)))
        m = {
            "step": self.step,
            "reward": mean(total),
            "reward_std": float(torch.tensor(total, dtype=torch.float32).std()) if len(total) > 1 else 0.0,
            "completion_len": mean(lengths),
            "truncated_frac": mean(batch["truncated"]),
            "reflection_rate": mean(batch["reflection"]),
            "zero_std_frac": float(torch.tensor(batch["zero_std"]).float().mean()),
            "loss": stats["loss"],
            "grad_norm": stats["grad_norm"],
            "kl": stats["kl"],
            "clip_frac": stats["clip_frac"],
            "lr": self.scheduler.get_last_lr()[0],
            "skipped": int(bool(skip_cause)),
            **s.sampling,
        }
        if cfg.rollout.async_steps:
            m.update({"async/staleness": s.staleness,
                      **{f"async/{k}": stats.get(k, 1.0 if k != "tis_capped_frac" else 0.0)
                         for k in ("tis_weight", "tis_weight_max", "tis_capped_frac")}})
        for name in per_reward:
            vals = [v for v in batch[f"rewards/{name}"] if v is not None]
            m[f"rewards/{name}"] = mean(vals)
            m[f"rewards/{name}_std"] = float(torch.tensor(vals).std()) if len(vals) > 1 else 0.0
            m[f"rewards/{name}_errors"] = errors[name]  # failed batches so far
        if "format" in per_reward:
            m["format_rate"] = m["rewards/format"]
        m.update(by_level(lengths, batch["levels"], "completion_len"))
        m["step_seconds"] = time.perf_counter() - t0
        m.update({f"timing/{k}": v for k, v in timing.items()})  # rank 0's
        if cfg.train.profile:
            m.update({f"profile/{k}": v for k, v in prof.items()})
        return m

    def _whole_batch(self, **lists) -> dict:
        """Per-completion lists of every process, concatenated in rank order (one process: its own)."""
        parts = distributed.gather_objects(lists)
        return {k: [x for part in parts for x in part[k]] for k in lists}

    def update(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], advantages: torch.Tensor,
               timing: dict | None = None, prof: dict | None = None, group_ids: list[int] | None = None,
               behaviour: list[list[float]] | None = None) -> dict:
        """μ optimizer steps on the GRPO loss over this process's samples of the step (all of
        them on one process), each over all samples in micro-batches with gradient accumulation.

        The normaliser counts the completions and tokens of the whole batch (all processes),
        so each micro-batch's loss is its part of the whole batch's loss, and the gradients,
        accumulated and then summed over processes, are the whole batch's gradient however the
        batch is split. Samples with zero advantage add nothing to the clipped term, so without
        a KL term they are left out of the forward/backward (the normaliser still counts them);
        a process left with none still joins the gradient sum, with zeros.

        Returns the whole batch's loss, grad_norm, and token means of kl, clip_frac and ratio
        over the samples used, and skip_cause: "" or why the update was not applied. With
        `behaviour` (the sampler's per-token log-probs, asynchronous rollouts) also the truncated
        importance weights' token mean, share capped and maximum.

        The learning-rate schedule counts the optimizer steps the run meant to take, μ per
        training step: every call advances it by μ, whether the updates were taken, there was
        nothing to learn, or a NaN/inf loss or gradient stopped them (train_step does the same
        for a step skipped for its rewards), so after n steps it stands at n·μ, as on --resume.
        """
        cfg, r, o = self.cfg, self.cfg.rollout, self.cfg.objective
        timing = {} if timing is None else timing
        prof = {} if prof is None else prof
        t2 = time.perf_counter()
        lengths = [len(c) for c in completion_ids]
        # sharded, every process runs as many forward passes as the others (their collectives pair up)
        everything = o.beta > 0 or self.sharded
        signal = (advantages != 0).reshape(len(lengths), -1).any(dim=1) if lengths else torch.zeros(0, dtype=torch.bool)
        keep = torch.arange(len(lengths)) if everything else signal.nonzero().flatten()
        n_seq, n_tok, n_keep, keep_tok = distributed.sum_values(
            [len(lengths), sum(lengths), len(keep), sum(lengths[i] for i in keep.tolist())], dtype=torch.int64)
        norm = Normaliser(n_seq, max(n_tok, 1), r.max_new_tokens)
        out = {"loss": 0.0, "grad_norm": 0.0, "clip_frac": 0.0, "kl": 0.0, "ratio": 1.0, "skip_cause": ""}
        if n_keep == 0:  # nothing to learn from anywhere; the learning-rate schedule still advances
            for _ in range(o.mu):
                self.scheduler.step()
            timing["logprobs"] = timing["update"] = 0.0
            return out

        micro = cfg.train.micro_batch_size
        batch = None
        if len(keep):
            batch = SequenceBatch.build([prompt_ids[i] for i in keep], [completion_ids[i] for i in keep],
                                        self.pad_id, self.device, group_ids and [group_ids[i] for i in keep])
        adv = advantages[keep].to(self.device)
        beh = None
        if behaviour is not None and batch is not None:  # padded like the batch's completions
            beh = torch.zeros(batch.completion_mask.shape, dtype=torch.float32)
            for row, i in enumerate(keep.tolist()):
                beh[row, : len(behaviour[i])] = torch.tensor(behaviour[i], dtype=torch.float32)
            beh = beh.to(self.device)
        old_logp = self._logprobs(self.policy, batch, micro) if o.mu > 1 and batch else None  # μ = 1: π_old = π_θ
        self._sync()
        prof["old_logprobs"] = time.perf_counter() - t2
        ref_logp = self._logprobs(self.ref, batch, micro) if self.ref is not None and batch else None
        self._sync()
        timing["logprobs"] = time.perf_counter() - t2
        prof["ref_logprobs"] = timing["logprobs"] - prof["old_logprobs"]
        t3 = time.perf_counter()
        prof["forward_backward"] = prof["optimizer"] = 0.0
        ntok = max(keep_tok, 1)  # tokens used by the whole batch: the statistics' weights
        for inner in range(o.mu):
            ti = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum, acc = 0.0, {"clip_frac": 0.0, "kl": 0.0, "ratio": 0.0}
            if behaviour is not None:
                acc.update(tis_weight=0.0, tis_capped_frac=0.0)
                tis_max = 0.0
            for i in range(0, len(batch) if batch else 0, micro):
                s = slice(i, i + micro)
                mb = batch.slice(s)
                with autocast(self.device, cfg.model.dtype):
                    logp = completion_logprobs(self.policy, mb, r.temperature)
                loss, st = grpo_loss(logp, None if old_logp is None else old_logp[s], adv[s], mb.completion_mask,
                                     ref_logp=None if ref_logp is None else ref_logp[s], beta=o.beta,
                                     eps_low=o.eps_low, eps_high=o.eps_high, aggregation=o.loss_agg,
                                     norm=norm, sequence_ratio=o.sequence_ratio,
                                     behaviour_logp=None if beh is None else beh[s], tis_cap=o.tis_cap)
                loss.backward()
                loss_sum += loss.item()
                w = mb.completion_mask.sum().item() / ntok
                for k in acc:
                    acc[k] += st[k] * w
                if behaviour is not None:
                    tis_max = max(tis_max, st["tis_weight_max"])
            if not self.sharded:  # sharded, the backward pass summed them (sharding.shard_model)
                distributed.sum_gradients(self.policy)  # the whole batch's gradient, on every process
            loss_sum, *summed = distributed.sum_values([loss_sum, *acc.values()])
            acc = dict(zip(acc, summed))
            out.update(acc, loss=loss_sum)
            if behaviour is not None:
                out["tis_weight_max"] = max(distributed.gather_objects(tis_max))
            self._sync()
            t4 = time.perf_counter()
            prof["forward_backward"] += t4 - ti
            max_norm = cfg.optim.max_grad_norm or float("inf")
            out["grad_norm"] = grad_norm = clip_grad_norm(self.policy.parameters(), max_norm)
            out["skip_cause"] = nonfinite_cause(loss_sum, grad_norm)
            if out["skip_cause"]:  # never apply a NaN/inf update (the loss and gradient are every process's)
                if self.is_main:
                    log.warning("step %d skipped: %s", self.step + 1, out["skip_cause"])
                self.optimizer.zero_grad(set_to_none=True)
                for _ in range(o.mu - inner):  # the skipped updates still count in the schedule
                    self.scheduler.step()
                break
            self.optimizer.step()
            self.scheduler.step()
            self._sync()
            prof["optimizer"] += time.perf_counter() - t4
        self._sync()
        timing["update"] = time.perf_counter() - t3
        return out

    # ------------------------------------------------------------------ the run
    def evaluate(self) -> dict:
        """Held-out metrics, measured by rank 0 while the other processes wait ({} on them)."""
        with gathered(self.policy):  # sharded: every process gathers the model; rank 0 samples alone
            if not self.eval_rows or not self.is_main:
                distributed.barrier()
                return {}
            t = time.perf_counter()
            out = evaluate(self.engine, self.eval_prompts, self.eval_rows, self.cfg, seed=self.cfg.run.seed + 1)
            out["timing/eval"] = time.perf_counter() - t
            distributed.barrier()
            return out

    @gives_threads_back
    def run(self) -> dict:
        t = self.cfg.train
        try:
            error = self.drive(self._logged_step, t.steps, t.save_every, first=lambda: {"step": 0, **self.evaluate()},
                               show=self.cfg.run.progress)
            return self.write_summary(self.interrupted, error)
        finally:
            self.close_sampling()

    def _logged_step(self) -> tuple[dict, dict]:
        """One step, its evaluation when due, its wall time: the metrics line (shown as it is)."""
        m = self.train_step()
        if self.step == self.cfg.train.steps or (self.cfg.eval.every and self.step % self.cfg.eval.every == 0):
            m.update(self.evaluate())
        m["time"] = self.wall()
        if self.checkpoint_seconds is not None:  # the checkpoint written after the previous step
            m["timing/checkpoint"], self.checkpoint_seconds = self.checkpoint_seconds, None
        return m, m
