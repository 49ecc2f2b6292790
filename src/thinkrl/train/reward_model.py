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

    thinkrl rm --config configs/rm-tiny.yaml [--out DIR] [--resume] [section.key=value ...]

writes OUT/model (the HF model + tokenizer + `thinkrl_rm.json`: template, part, held-out
accuracy, training stats), OUT/metrics.jsonl, OUT/checkpoints/ (every train.save_every steps,
at the end and on Ctrl-C; --resume continues from the newest and ends as an uninterrupted run
would), OUT/config.yaml and OUT/summary.json.
`RewardModel.from_dir(OUT/model)` scores (question, response) pairs; the rewards
`reward_model`, `helpfulness` and `harmlessness` (`thinkrl.rewards.model`) serve it to GRPO.

Synthetic data (`data.train: synthetic:helpfulness` or `synthetic:harmlessness`) comes from
`thinkrl.task.general`, whose preferences a known rule decides; the held-out accuracy is
then also reported against the rule (`test/rule_auc`: how well the score separates the
held-out responses the rule accepts from those it rejects, across prompts).

A process reward model (PRM; Lightman et al. 2023, DeepSeekMath §4.1.3) with
`train.objective=step`: the same model and sequence (prompt ids + completion ids, no EOS),
its head read at the last token of each step (the token holding the step's last
character, `rewards.scorer.encode_steps`) and trained with the binary cross-entropy of
sigmoid(score) against the step's label, averaged over every step of the batch:

    loss = −mean_steps [ y log σ(s) + (1 − y) log(1 − σ(s)) ]

on rows {prompt (or question), completion, steps: [{end, label}]} (`end`: the step's
character end in the completion, exclusive), or `data.train=synthetic:steps`: the embedded
task's traces labelled by the task itself (`thinkrl.task.steps`; held-out traces on its
test problems). Held out: the step accuracy at p > 0.5 (`test/accuracy`), on right and on
wrong steps apart (`test/accuracy_right`, `test/accuracy_wrong`), and `test/auc`. The
`process_model` step reward (`thinkrl.rewards.process_model`) serves it; configs/prm-tiny.yaml.

The defaults (spelled out in configs/rm-tiny.yaml) are the reward models of the tiny R1 pipeline: a fresh 2-layer, 32-wide model (44k
parameters) of the embedded model's architecture and tokenizer learned the synthetic
helpfulness preferences to 0.95-0.97 held-out accuracy in about 75 s on one CPU thread,
where fine-tuning the 1M embedded model reached 0.86 in more time.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..config import ConfigError
from ..config_io import to_yaml
from ..data import DataError
from .context import TrainingRun, gives_threads_back, setup
from .loop import lr_factor, nonfinite_cause
from ..policy import autocast, disable_dropout, load_tokenizer, resolve_device
from .reward_model_config import PARTS, RULES, RMConfig, RMDataConfig, RMLogConfig, RMModelConfig, RMTrainConfig, \
    load_rm_config, validate
from .reward_model_data import load_data, rule_metrics, rule_verdicts, step_metrics
from ..rewards.scorer import (INFO_FILE, RewardModel, encode, encode_steps, load_reward_backbone, response_part,
                              score_sequences, score_step_sequences, sequence_scores, step_logits)
from ..template import render

log = logging.getLogger("thinkrl.rm")

# the settings live in thinkrl.train.reward_model_config, the trained model's scoring in thinkrl.rewards.scorer;
# they are importable from here as well
__all__ = ["INFO_FILE", "PARTS", "RULES", "RMConfig", "RMDataConfig", "RMLogConfig", "RMModelConfig", "RMTrainConfig",
           "RewardModel", "bradley_terry_loss", "encode", "encode_pairs", "encode_step_rows", "load_reward_backbone",
           "load_rm_config", "main", "pairwise_accuracy", "response_part", "score_sequences", "sequence_scores",
           "step_bce_loss", "train_reward_model", "validate"]


# ---------------------------------------------------------------------------- the loss


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """−mean log σ(r_c − r_r): the negative log-likelihood of the preferences under the
    Bradley-Terry model (InstructGPT eq. 1). logsigmoid keeps it finite for large margins."""
    return -torch.nn.functional.logsigmoid(r_chosen - r_rejected).mean()


def step_bce_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """−mean over steps of [y log σ(s) + (1 − y) log(1 − σ(s))]: the binary cross-entropy of each
    step's sigmoid(score) against its label, every step of the batch weighing the same
    (computed from the logits, so it stays finite for large scores)."""
    return torch.nn.functional.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype))


def pairwise_accuracy(r_chosen, r_rejected) -> float:
    """Share of pairs whose chosen response scores higher; a tie counts half."""
    c, r = torch.as_tensor(r_chosen, dtype=torch.float64), torch.as_tensor(r_rejected, dtype=torch.float64)
    if c.numel() == 0:
        return float("nan")
    return float(((c > r).double() + 0.5 * (c == r).double()).mean())


# ---------------------------------------------------------------------------- training


def encode_pairs(tokenizer, pairs: list[dict], template: str, part: str, limit: int, what: str):
    """(pairs kept, [(chosen ids, rejected ids)]): pairs longer than `limit` are dropped (counted)."""
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


def encode_step_rows(tokenizer, rows: list[dict], template: str, limit: int, what: str):
    """(rows kept, [(ids, step positions, labels)]): rows longer than `limit` tokens and rows
    without steps are dropped (counted)."""
    seqs = encode_steps(tokenizer, [render(r["prompt"], template, tokenizer) for r in rows],
                        [r["completion"] for r in rows], [[st["end"] for st in r["steps"]] for r in rows])
    keep = [i for i, (ids, _) in enumerate(seqs) if len(ids) <= limit and rows[i]["steps"]]
    if len(keep) < len(rows):
        log.warning("%s: skipped %d of %d step-labelled rows longer than %d tokens or without steps", what,
                    len(rows) - len(keep), len(rows), limit)
    if not keep:
        raise DataError(f"{what}: no step-labelled row has steps and fits in {limit} tokens; raise data.max_tokens "
                        "or check the data")
    return [rows[i] for i in keep], [(*seqs[i], [bool(st["label"]) for st in rows[i]["steps"]]) for i in keep]


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

    def state_dict(self) -> dict:
        return {"n": self.n, "generator": self.g.get_state(), "order": list(self.order)}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise DataError(f"the checkpoint was made on {state['n']} training pairs, this run has {self.n}")
        self.g.set_state(state["generator"])
        self.order = list(state["order"])


class RMTrainer(TrainingRun):
    """Bradley-Terry training of one reward model; the run's life (checkpoints, resume, stop,
    progress, final save) is `TrainingRun`'s."""

    desc, final_name, sticky = "RM", "model", ("test/accuracy",)
    live = (("loss", "loss", "{:.3f}"), ("acc", "accuracy", "{:.2f}"), ("test", "test/accuracy", "{:.3f}"))

    @setup
    def __init__(self, cfg: RMConfig, out: str | Path, resume: bool = False, show_progress: bool | None = None):
        self.cfg, self.t0 = cfg, time.time()
        m, d, t = cfg.model, cfg.data, cfg.train
        self.begin(out, cfg.run.seed, cfg.run.threads, t.max_bad_steps, lr="train.lr", clip="train.max_grad_norm")
        self.show_progress = cfg.run.progress if show_progress is None else show_progress
        self.device = resolve_device(m.device)
        self.stepwise = t.objective == "step"
        train, test, self.rule = load_data(d, cfg.run.seed, t.objective)
        self.verdicts = rule_verdicts(test, self.rule) if self.rule != "none" and test else None
        self.tok = load_tokenizer(m.tokenizer or m.path)
        self.model = load_reward_backbone(m.path, self.device, m.layers, cfg.run.seed, m.init, m.hidden_size, m.attention)
        disable_dropout(self.model)  # both responses of a pair scored by the same function, as the policy trainers
        self.model.config.pad_token_id = self.tok.pad_token_id
        limit = d.max_tokens or int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or 10**9
        enc = (lambda rows, what: encode_step_rows(self.tok, rows, m.template, limit, what)) if self.stepwise else \
            (lambda rows, what: encode_pairs(self.tok, rows, m.template, d.part, limit, what))
        self.train_pairs, self.train_enc = enc(train, "train")
        test, self.test_enc = enc(test, "test") if test else ([], [])
        if self.verdicts is not None and len(test) < len(self.verdicts):
            self.verdicts = rule_verdicts(test, self.rule)
        self.n_test = len(test)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, t.steps, t.warmup_steps, t.schedule))
        self.batches = _Batches(len(self.train_enc), t.batch_size, cfg.run.seed)
        self.evals, self.last_loss = {}, None  # the newest held-out metrics; the last step's loss
        self.track(self.model, self.tok, self.optimizer, self.scheduler, self.batches, keep=t.keep_checkpoints)
        self.open(resume, to_yaml(cfg), cfg.log.tensorboard, cfg.log.wandb_project, asdict(cfg))
        self.n_params = sum(p.numel() for p in self.model.parameters())
        where = f"resuming from {self.resumed_from}" if self.resumed_from else "from step 0"
        print(f"thinkrl rm: {m.path if m.init == 'pretrained' else 'fresh'} model ({self.n_params / 1e6:.3f}M "
              f"parameters, {self.model.config.num_hidden_layers} layers) on {self.device}; {len(self.train_pairs)} "
              f"train / {self.n_test} held-out {self.unit}; objective={t.objective}, part={d.part}, "
              f"template={m.template}, rule={self.rule}; {t.steps} steps × {t.batch_size} {self.unit}, {where}; "
              f"run dir {self.run_dir}", file=sys.stderr)

    @property
    def unit(self) -> str:
        return "completions" if self.stepwise else "pairs"

    def extra_state(self) -> dict:
        return {"evals": self.evals, "last_loss": self.last_loss}

    def load_extra_state(self, state: dict) -> None:
        self.evals, self.last_loss = state["evals"], state["last_loss"]

    def scores(self, seqs) -> list[float]:
        m = self.cfg.model
        return score_sequences(self.model, seqs, self.tok.pad_token_id, self.cfg.train.eval_batch_size,
                               lambda: autocast(self.device, m.dtype))

    def step_scores(self, enc) -> list[float]:
        """The head at every step of the encoded rows, flattened in order, without gradients."""
        m = self.cfg.model
        out = score_step_sequences(self.model, [e[0] for e in enc], [e[1] for e in enc], self.tok.pad_token_id,
                                   self.cfg.train.eval_batch_size, lambda: autocast(self.device, m.dtype))
        return [v for row in out for v in row]

    def evaluate(self) -> dict:
        if self.stepwise:
            labels = [y for e in self.test_enc for y in e[2]]
            return {f"test/{k}": v for k, v in step_metrics(self.step_scores(self.test_enc), labels).items()}
        c, r = self.scores([e[0] for e in self.test_enc]), self.scores([e[1] for e in self.test_enc])
        res = {"test/accuracy": pairwise_accuracy(c, r), "test/margin": sum(a - b for a, b in zip(c, r)) / len(c)}
        if self.verdicts is not None:
            res.update({f"test/{k}": v for k, v in rule_metrics(self.verdicts, c, r).items()})
        return res

    def train_step(self) -> tuple[dict, dict]:
        """One step on the next batch of pairs, and the held-out evaluation when due: the metrics line."""
        t, enc = self.cfg.train, self.train_enc
        idx = self.batches.next()
        if self.stepwise:
            with autocast(self.device, self.cfg.model.dtype):
                s = step_logits(self.model, [enc[i][0] for i in idx], [enc[i][1] for i in idx], self.tok.pad_token_id)
            y = torch.tensor([v for i in idx for v in enc[i][2]], dtype=torch.bool, device=s.device)
            loss = step_bce_loss(s, y)
            stats = {"accuracy": ((s.detach() > 0) == y).double().mean().item(),
                     "wrong_share": 1 - y.double().mean().item()}
        else:
            with autocast(self.device, self.cfg.model.dtype):
                r = sequence_scores(self.model, [enc[i][0] for i in idx] + [enc[i][1] for i in idx],
                                    self.tok.pad_token_id)
            r_chosen, r_rejected = r[: len(idx)], r[len(idx):]
            loss = bradley_terry_loss(r_chosen, r_rejected)
            stats = {"accuracy": pairwise_accuracy(r_chosen.detach(), r_rejected.detach()),
                     "margin": (r_chosen - r_rejected).mean().item()}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.max_grad_norm or float("inf")))
        cause = nonfinite_cause(loss.item(), gnorm)
        self.update_or_skip(cause)  # never a NaN/inf update; the schedule counts the step
        self.last_loss = loss.item()
        row = {"step": self.step, "loss": loss.item(), **stats, "grad_norm": gnorm,
               "lr": self.scheduler.get_last_lr()[0], "skipped": int(bool(cause))}
        if self.test_enc and ((t.eval_every and self.step % t.eval_every == 0) or self.step == t.steps):
            self.evals = self.evaluate()
            row.update(self.evals)
        return row, row

    @gives_threads_back
    def run(self) -> dict:
        """Train (or go on training), then save the model with its info; returns the summary."""
        m, d, t = self.cfg.model, self.cfg.data, self.cfg.train
        self.model.train()
        error = self.drive(self.train_step, t.steps, t.save_every, show=self.show_progress)
        if self.interrupted:  # no model is written (it would be served as a reward); the summary says why
            return self._summary({"model_dir": None, "interrupted": True, "error": error, "steps": self.step,
                                  "test": self.evals})
        train_seconds = self.wall()
        self.model.eval()
        # the center c of the rewards' sigmoid(r − c): the mean score of (up to) 256 training pairs' responses;
        # a process reward model's sigmoid(score) is a probability already
        center = [0.0] if self.stepwise else self.scores([s for e in self.train_enc[:256] for s in e])
        info = {
            "objective": t.objective, "template": m.template, "part": d.part,
            "score_center": sum(center) / len(center), "dtype": m.dtype,
            "init": m.init, "init_from": m.path, "layers": self.model.config.num_hidden_layers,
            "hidden_size": self.model.config.hidden_size, "parameters": self.n_params, "rule": self.rule,
            "train_data": d.train, "test_data": d.test if self.test_enc else "none",
            "test_accuracy": self.evals.get("test/accuracy"), "test": self.evals,
            "train": {"steps": t.steps, "batch_size": t.batch_size, self.unit: len(self.train_pairs),
                      **({"labelled_steps": sum(len(e[2]) for e in self.train_enc)} if self.stepwise else {}),
                      "seconds": round(train_seconds, 1), "final_loss": self.last_loss,
                      "threads": torch.get_num_threads(), "device": str(self.device)},
        }
        model_dir = self.save_final(extra={INFO_FILE: json.dumps(info, indent=2) + "\n"})
        return self._summary({**info, "model_dir": str(model_dir), "interrupted": False, "error": None})

    def _summary(self, fields: dict) -> dict:
        """summary.json: `fields`, where the run resumed from, the seconds of every segment (setup included)."""
        return self.save_summary({**fields, "resumed_from": str(self.resumed_from) if self.resumed_from else None,
                                  "wall_seconds": round(self.wall_before + time.time() - self.t0, 1)})


def train_reward_model(cfg: RMConfig, out: str | Path, show_progress: bool | None = None,
                       resume: bool = False) -> dict:
    """Train, evaluate and save a reward model (on --resume, from the newest checkpoint in OUT);
    returns the summary (also OUT/summary.json)."""
    return RMTrainer(cfg, out, resume, show_progress).run()


# ---------------------------------------------------------------------------- command line


def command(args, out: Path, config: str | None) -> int:
    """`thinkrl rm` in a claimed run directory `out`, with settings from `config` and `args.overrides`."""
    try:
        cfg = load_rm_config(config, args.overrides)
        s = train_reward_model(cfg, out, resume=args.resume)
    except (ValueError, OSError) as e:  # ConfigError, DataError, a checkpoint that does not fit
        print(f"thinkrl rm: {e}", file=sys.stderr)
        return 2
    if s["error"]:
        print(f"thinkrl rm: {s['error']}", file=sys.stderr)
        return 1
    if s["interrupted"]:
        print(f"thinkrl rm: stopped at step {s['steps']}; continue with --resume --out {out}", file=sys.stderr)
        return 130
    acc, test = s.get("test_accuracy"), s["test"]
    what, extra = ("step" if s.get("objective") == "step" else "pairwise"), ""
    if test.get("test/rule_auc") is not None:
        extra = f", rule AUC {test['test/rule_auc']:.3f}"
    if test.get("test/accuracy_wrong") is not None:
        extra = f" (right steps {test['test/accuracy_right']:.3f}, wrong steps {test['test/accuracy_wrong']:.3f})"
    print(f"thinkrl rm: done in {s['train']['seconds']:.0f}s of training; held-out {what} accuracy "
          f"{'n/a' if acc is None else f'{acc:.3f}'}{extra}; model {s['model_dir']}")
    return 0
