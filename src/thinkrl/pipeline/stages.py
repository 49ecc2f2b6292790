"""The kinds of stage a pipeline is made of. Each takes a `StageContext` (settings with the
inputs' paths filled in, a working directory, whether it resumes) and returns a summary with
its `outputs`. Settings are the stage's own config, nested by section as in its YAML
(`grpo`: thinkrl.config.Config; `sft`: thinkrl.train.sft.SFTConfig; ...)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..train.loop import restoring_threads
from .graph import StageContext, StageStopped

log = logging.getLogger("thinkrl.pipeline")


def _fill(obj, settings: dict):
    from ..config_io import _apply

    _apply(obj, settings)
    return obj


def grpo(ctx: StageContext) -> dict:
    """GRPO (R1-Zero, stage 2, stage 4, or a student trained by RL directly). Output: the
    final checkpoint, a loadable model directory."""
    from .. import checkpoint as ckpt
    from ..config import Config, validate
    from ..train.grpo import GRPOTrainer

    cfg = _fill(Config(), ctx.settings)
    validate(cfg)
    summary = GRPOTrainer(cfg, ctx.out, resume=ctx.resume).run()
    if summary.get("error") or summary.get("interrupted"):
        raise StageStopped(f"stage {ctx.name}: training stopped at step {summary.get('steps')}: "
                           f"{summary.get('error') or 'interrupted'}")
    final = ckpt.latest_checkpoint(ctx.out / "checkpoints")
    keep = {k: summary.get(k) for k in ("accuracy_start", "accuracy_end", "wall_seconds", "steps")}
    keep["samples"] = cfg.train.steps * cfg.completions_per_step
    return {"outputs": {"model": str(final), "dir": str(ctx.out)}, **keep}


def sft(ctx: StageContext) -> dict:
    """Supervised fine-tuning (stage 1 on the cold-start set, stage 3 on the rejection-sampled
    mix). Output: the fine-tuned model."""
    from ..train.sft import SFTConfig, run_sft, validate_sft

    cfg = _fill(SFTConfig(), ctx.settings)
    validate_sft(cfg)
    s = run_sft(cfg, ctx.out, resume=ctx.resume)
    if s.get("interrupted") or not s.get("final_dir"):
        raise StageStopped(f"stage {ctx.name}: SFT stopped at step {s.get('steps')} (checkpoint kept)"
                            + (f": {s['error']}" if s.get("error") else ""))
    keep = {k: s.get(k) for k in ("train_loss", "eval_loss", "n_samples", "seconds", "tokens")}
    return {"outputs": {"model": s["final_dir"], "dir": str(ctx.out)}, **keep}


def coldstart(ctx: StageContext) -> dict:
    from .coldstart import ColdStartConfig, run_coldstart

    report = run_coldstart(_fill(ColdStartConfig(), ctx.settings), ctx.out)
    return {"outputs": {"data": str(ctx.out / "coldstart.jsonl"), "dir": str(ctx.out)}, **_counts(report)}


def reject(ctx: StageContext) -> dict:
    from .reject import RejectConfig, run_reject

    report = run_reject(_fill(RejectConfig(), ctx.settings), ctx.out)
    return {"outputs": {"data": str(ctx.out / "reject.jsonl"), "dir": str(ctx.out)}, **_counts(report)}


def _counts(report: dict) -> dict:
    return {k: v for k, v in report.items() if isinstance(v, (int, float, str)) or k == "dropped"}


def general_data(ctx: StageContext) -> dict:
    """The synthetic non-reasoning task family and its preference pairs (task/general.py)."""
    from ..task.general import write_general

    write_general(ctx.out, seed=int(ctx.settings.get("seed", 0)))
    names = {"train": "general_train", "test": "general_test", "prefs_helpful_train": "prefs_helpful_train",
             "prefs_helpful_test": "prefs_helpful_test", "prefs_harmless_train": "prefs_harmless_train",
             "prefs_harmless_test": "prefs_harmless_test"}
    return {"outputs": {k: str(ctx.out / f"{v}.jsonl") for k, v in names.items()}}


def reward_model(ctx: StageContext) -> dict:
    from ..train.reward_model import RMConfig, train_reward_model, validate

    cfg = _fill(RMConfig(), ctx.settings)
    validate(cfg)
    s = train_reward_model(cfg, ctx.out, resume=ctx.resume)  # a killed stage continues from its checkpoint
    if s.get("error") or s.get("interrupted"):
        raise StageStopped(f"stage {ctx.name}: " + (s.get("error") or f"stopped at step {s.get('steps')} "
                                                     "(checkpoint kept)"))
    return {"outputs": {"model": s["model_dir"], "dir": str(ctx.out)},
            **{k: v for k, v in s.items() if isinstance(v, (int, float, str))}}


def mix(ctx: StageContext) -> dict:
    """A mixed RL dataset for stage 4: each source's rows with a `type` column (and an
    `answer`: the reference, or for general rows their reference response), shuffled."""
    import random

    from ..data import load_dataset

    rows = []
    for src in ctx.settings["sources"]:
        part = load_dataset(src["path"], "train", src.get("question_field", "question"),
                            src.get("answer_field", "answer"))
        limit = src.get("limit")
        part = part[:limit] if limit else part
        rows += [{**r, "type": src["type"]} for r in part]
    random.Random(ctx.settings.get("seed", 0)).shuffle(rows)
    out = ctx.out / "mix.jsonl"
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    counts = {}
    for r in rows:
        counts[r["type"]] = counts.get(r["type"], 0) + 1
    return {"outputs": {"data": str(out)}, "rows": len(rows), "by_type": counts}


def distill(ctx: StageContext) -> dict:
    from ..distill.run import DistillConfig, run_distill

    s = run_distill(_fill(DistillConfig(), ctx.settings), ctx.out, resume=ctx.resume)
    if s.get("interrupted"):
        raise StageStopped(f"stage {ctx.name}: distillation stopped (its SFT checkpoint is kept)")
    keep = {k: v for k, v in s.items() if isinstance(v, (int, float, str))}
    return {"outputs": {"model": s.get("student_dir", str(ctx.out / "student")), "dir": str(ctx.out)}, **keep}


def evaluate(ctx: StageContext) -> dict:
    """One row of the end table: `thinkrl eval` on the embedded task (pass@1, cons@K, length),
    the R1 readable format and language consistency of those samples, and on the general
    task, the share of answers that are helpful and harmless by the task's own rules."""
    from .table import evaluate_model

    metrics = evaluate_model(ctx.settings, ctx.out)
    path = ctx.out / "metrics.json"
    path.write_text(json.dumps(metrics, indent=1))
    return {"outputs": {"metrics": str(path)}, **metrics}


def report(ctx: StageContext) -> dict:
    from .table import write_table

    return write_table(ctx.settings, ctx.out)


def check(kind: str, settings: dict) -> None:
    """Validates a stage's settings as its kind will read them, without running anything:
    ConfigError (a ValueError) for a key that does not exist, a value of the wrong type, or an
    impossible one. References to other stages' outputs (`${zero.model}`) are left as they are."""
    from .. import config
    from ..distill import run as distill
    from ..train import reward_model, sft
    from . import coldstart as cs
    from . import reject as rj

    made = {"grpo": (config.Config, config.validate), "sft": (sft.SFTConfig, sft.validate_sft),
            "rm": (reward_model.RMConfig, reward_model.validate), "coldstart": (cs.ColdStartConfig, cs.validate),
            "reject": (rj.RejectConfig, rj.validate), "distill": (distill.DistillConfig, distill.validate)}
    if kind in made:  # the other kinds (general, mix, eval, report) take a few plain settings
        cls, validate = made[kind]
        validate(_fill(cls(), settings))


# every stage gives torch's thread count back as it found it: a stage's `threads` never leaks
KINDS = {kind: restoring_threads(fn) for kind, fn in {
    "grpo": grpo, "sft": sft, "coldstart": coldstart, "reject": reject, "general": general_data,
    "rm": reward_model, "mix": mix, "distill": distill, "eval": evaluate, "report": report}.items()}
# the kinds that continue a killed run from their checkpoints; the others start over in an empty directory
RESUMABLE = {"grpo", "sft", "rm", "distill"}


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
