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
from dataclasses import asdict
from pathlib import Path

import torch

from ..config import ConfigError, to_yaml
from ..data import DataError
from .loop import BadSteps, lr_factor, nonfinite_cause, threads_restored
from ..metrics import MetricsWriter
from ..policy import autocast, disable_dropout, load_tokenizer, resolve_device, save_pretrained
from .reward_model_config import PARTS, RULES, RMConfig, RMDataConfig, RMLogConfig, RMModelConfig, RMTrainConfig, \
    load_rm_config, validate
from .reward_model_data import load_data, rule_metrics, rule_verdicts
from ..rewards.scorer import (INFO_FILE, RewardModel, encode, load_reward_backbone, response_part, score_sequences,
                             sequence_scores)
from ..rundir import RunDirError, claim
from ..template import render

log = logging.getLogger("thinkrl.rm")

# the settings live in thinkrl.train.reward_model_config, the trained model's scoring in thinkrl.rewards.scorer;
# they are importable from here as well
__all__ = ["INFO_FILE", "PARTS", "RULES", "RMConfig", "RMDataConfig", "RMLogConfig", "RMModelConfig", "RMTrainConfig",
           "RewardModel", "bradley_terry_loss", "encode", "encode_pairs", "load_reward_backbone", "load_rm_config",
           "main", "pairwise_accuracy", "response_part", "score_sequences", "sequence_scores", "train_reward_model",
           "validate"]


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
    with threads_restored():  # the caller's setting again after (the pipeline goes on in this process)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        return _train(cfg, Path(out), show_progress)


def _train(cfg: RMConfig, out: Path, show_progress: bool | None) -> dict:
    from tqdm.auto import tqdm

    t0 = time.time()
    m, d, t = cfg.model, cfg.data, cfg.train
    device = resolve_device(m.device)
    train, test, rule = load_data(d, t.seed)
    verdicts = rule_verdicts(test, rule) if rule != "none" and test else None
    tok = load_tokenizer(m.tokenizer or m.path)
    model = load_reward_backbone(m.path, device, m.layers, t.seed, m.init, m.hidden_size, m.attention)
    disable_dropout(model)  # both responses of a pair scored by the same function, as the policy trainers
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
    row, evals, t_train, error = {}, {}, time.time(), None
    bad = BadSteps(t.max_bad_steps, lr="train.lr", clip="train.max_grad_norm")  # GRPO's and SFT's policy too
    for step in range(1, t.steps + 1):
        idx = batches.next()
        with autocast(device, m.dtype):
            r = sequence_scores(model, [train_enc[i][0] for i in idx] + [train_enc[i][1] for i in idx],
                                tok.pad_token_id)
        r_chosen, r_rejected = r[: len(idx)], r[len(idx):]
        loss = bradley_terry_loss(r_chosen, r_rejected)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm or float("inf")))
        cause = nonfinite_cause(loss.item(), gnorm)
        if cause:  # never apply a NaN/inf update; the schedule still counts the step
            log.warning("step %d skipped: %s", step, cause)
            opt.zero_grad(set_to_none=True)
        else:
            opt.step()
        sched.step()
        bad.record(cause)
        row = {"step": step, "loss": loss.item(), "accuracy": pairwise_accuracy(r_chosen.detach(), r_rejected.detach()),
               "margin": (r_chosen - r_rejected).mean().item(), "grad_norm": gnorm, "lr": sched.get_last_lr()[0],
               "skipped": int(bool(cause))}
        if test_enc and ((t.eval_every and step % t.eval_every == 0) or step == t.steps):
            evals = evaluate()
            row.update(evals)
        metrics.write(row)
        bar.set_postfix_str(f"loss={row['loss']:.3f} acc={row['accuracy']:.2f}"
                            + (f" test={evals['test/accuracy']:.3f}" if evals else ""), refresh=False)
        bar.update(1)
        if bad.exhausted:
            error = bad.message(None)
            break
    bar.close()
    metrics.close()
    if error:  # no model is written (it would be served as a reward); the summary says why
        log.error("%s", error)
        summary = {"model_dir": None, "interrupted": True, "error": error, "steps": step, "test": evals,
                   "wall_seconds": round(time.time() - t0, 1)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
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
    save_pretrained(model, tok, model_dir, extra={INFO_FILE: json.dumps(info, indent=2) + "\n"})
    summary = {**info, "model_dir": str(model_dir), "interrupted": False, "error": None,
               "wall_seconds": round(time.time() - t0, 1)}
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
    overrides = list(args.overrides) + (["log.progress=false"] if args.no_progress else [])
    try:
        cfg = load_rm_config(args.config, overrides)
    except (ConfigError, OSError) as e:
        print(f"thinkrl rm: {e}", file=sys.stderr)
        return 2
    try:  # the run directory is this run's alone (locked while it runs)
        with claim(args.out, overwrite=args.overwrite, command="rm", prefix="rm-") as run_dir:
            s = train_reward_model(cfg, run_dir.path)
    except (ConfigError, DataError, OSError, ValueError, RunDirError) as e:
        print(f"thinkrl rm: {e}", file=sys.stderr)
        return 2
    if s["error"]:
        print(f"thinkrl rm: {s['error']}", file=sys.stderr)
        return 1
    acc = s.get("test_accuracy")
    extra = ""
    if s["test"].get("test/rule_auc") is not None:
        extra = f", rule AUC {s['test']['test/rule_auc']:.3f}"
    print(f"thinkrl rm: done in {s['train']['seconds']:.0f}s of training; held-out pairwise accuracy "
          f"{'n/a' if acc is None else f'{acc:.3f}'}{extra}; model {s['model_dir']}")
    return 0
