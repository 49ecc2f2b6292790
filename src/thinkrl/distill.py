"""Distillation (DeepSeek-R1 §2.4, docs/R1-PIPELINE.md §Distillation): a smaller student
learns from a teacher's samples by SFT only, no RL.

    thinkrl distill --teacher T --student S --prompts P [--data stage3.jsonl] [--out DIR]
                    [--on-policy] [--config F] [section.key=value ...]

The R1 recipe, `mode: sft` (the default):

1. samples: the teacher answers every prompt `sample.n` times (`pipeline.sample`), or an
   existing dataset of prompt/response rows is reused (`--data`, e.g. stage 3's ~800k);
2. filter: where a prompt row has a reference `answer`, only correct (accuracy reward) and
   well-formed (`filter.format`) samples are kept; truncated, duplicate and empty ones are
   dropped, at most `filter.max_per_prompt` per prompt; every drop is counted by reason;
3. SFT (`thinkrl.sft.run_sft`) of the student on the kept *text*. The student re-tokenizes
   it with its own tokenizer, so its architecture and vocabulary may differ from the
   teacher's (R1 distilled into Qwen2.5 and Llama-3 alike); a response the student's
   tokenizer cannot reproduce exactly is dropped (`not_representable`).

Steps 1-2 are `thinkrl.distill_data`; this module holds the config, its checks, the run and the CLI.

Writes OUT/distill.jsonl (prompt, response, answer, teacher, prompt_id, sample_index),
OUT/sft/ (the SFT run), OUT/student/ (the final model) and OUT/summary.json.

`mode: on_policy` (`--on-policy`, beyond the paper) trains the student on its own samples
towards the teacher's per-token distribution by reverse KL: see `thinkrl.distill_onpolicy`.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .config import ConfigError, load_into, to_yaml
from .data import DataError
from .rundir import run_claimed
from .distill_data import (dataset_samples, distill_row, filter_samples, load_prompts, read_jsonl, round_trips,
                           teacher_samples)

log = logging.getLogger("thinkrl.distill")

# the data steps live in thinkrl.distill_data; they are importable from here as well
__all__ = ["DistillConfig", "DistillDataConfig", "DistillError", "DistillEvalConfig", "FilterConfig", "ModelRef",
           "OnPolicyConfig", "RunConfig", "TeacherSampling", "dataset_samples", "distill_row", "evaluate_model",
           "filter_samples", "load_distill_config", "load_prompts", "main", "read_jsonl", "round_trips", "run_distill",
           "sft_config", "teacher_samples", "validate"]

FORMATS = ("format", "format_lenient", "none")


@dataclass
class ModelRef:
    path: str = "embedded"  # "embedded", a local directory or a hub id
    tokenizer: str | None = None  # defaults to `path`
    device: str = "auto"
    dtype: str = "auto"  # auto | float32 | bfloat16 (autocast on CUDA)


@dataclass
class DistillDataConfig:
    prompts: str | None = None  # JSONL of question[/answer] rows or "embedded"; None: embedded unless `dataset`
    dataset: str | None = None  # an existing prompt/response JSONL to reuse instead of sampling (--data)
    question_field: str = "question"
    answer_field: str = "answer"  # optional column; where present, samples must be correct
    prompt_field: str = "prompt"  # the question column of `dataset` rows
    response_field: str = "response"  # distill.jsonl itself always has prompt / response columns
    max_prompts: int = 0  # use at most this many prompts (0 = all)
    template: str = "r1_zero"  # how a question becomes a prompt, for teacher and student alike
    # held-out prompts: auto (embedded: its test split; a JSONL: its last eval.size rows), a JSONL, or none
    eval: str = "auto"
    on_bad_row: str = "error"  # error (file:line) | skip (counted)


@dataclass
class TeacherSampling:
    n: int = 4  # samples per prompt
    temperature: float = 0.7  # R1 stage 3 sampled at 0.6-0.7
    top_p: float = 0.95
    max_new_tokens: int = 120
    stop: list[str] = field(default_factory=lambda: ["</answer>"])
    batch_size: int = 256


@dataclass
class FilterConfig:
    correct: bool = True  # where a row has an answer, keep only samples the accuracy reward scores 1
    format: str = "format"  # format (strict R1 tags) | format_lenient | none
    drop_truncated: bool = True  # samples cut at max_new_tokens
    dedup: bool = True  # the same response to the same prompt once
    max_per_prompt: int = 0  # 0 = no cap


@dataclass
class OnPolicyConfig:
    steps: int = 200
    prompts_per_step: int = 8
    samples_per_prompt: int = 4
    lr: float = 1e-4
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0 turns clipping off
    temperature: float = 1.0  # the student's sampling temperature (the KL itself is at temperature 1)
    top_p: float = 1.0
    max_new_tokens: int = 80
    stop: list[str] = field(default_factory=lambda: ["</answer>"])
    micro_batch_size: int = 32  # completions per forward/backward
    save_every: int = 50  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2


@dataclass
class DistillEvalConfig:
    size: int = 100  # held-out prompts (0 = no evaluation)
    every: int = 25  # on-policy: evaluate every N steps (and at start and end); 0 = start/end only
    temperature: float = 0.6  # R1 protocol: sampled, never greedy
    top_p: float = 0.95
    samples: int = 1
    max_new_tokens: int = 80
    batch_size: int = 300


@dataclass
class RunConfig:
    seed: int = 0
    threads: int = 0  # CPU threads for torch; 0 = leave torch's default
    progress: bool = True


class DistillError(ValueError):
    """A distillation that cannot run as asked; the message says what to do instead."""


def _default_sft():
    from .sft import SFTConfig

    return SFTConfig()


@dataclass
class DistillConfig:
    mode: str = "sft"  # sft (the R1 recipe) | on_policy
    teacher: ModelRef = field(default_factory=ModelRef)
    student: ModelRef = field(default_factory=lambda: ModelRef(path=""))
    data: DistillDataConfig = field(default_factory=DistillDataConfig)
    sample: TeacherSampling = field(default_factory=TeacherSampling)
    filter: FilterConfig = field(default_factory=FilterConfig)
    # the SFT of the student (thinkrl.sft.SFTConfig); model and training data are set by distill
    sft: Any = field(default_factory=_default_sft)
    on_policy: OnPolicyConfig = field(default_factory=OnPolicyConfig)
    eval: DistillEvalConfig = field(default_factory=DistillEvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


# the SFT settings distill fills in itself, and where the user sets them instead
_SFT_OWNED = {("model", "path"): "student.path (--student)", ("model", "tokenizer"): "student.tokenizer",
              ("model", "device"): "student.device", ("model", "dtype"): "student.dtype",
              ("data", "train"): "data.dataset (--data) or data.prompts", ("data", "template"): "data.template",
              ("data", "prompt_field"): "data.prompt_field (the --data column; distill.jsonl has prompt/response)",
              ("data", "response_field"): "data.response_field (the --data column; distill.jsonl has prompt/response)"}


def validate(cfg: DistillConfig) -> None:
    errors = []

    def need(cond, msg):
        if not cond:
            errors.append(msg)

    s, f, d, op, e = cfg.sample, cfg.filter, cfg.data, cfg.on_policy, cfg.eval
    need(cfg.mode in ("sft", "on_policy"), f"mode {cfg.mode!r}: use sft (the R1 recipe) or on_policy")
    need(bool(cfg.student.path), "no student: give --student DIR (or student.path=...)")
    need(bool(cfg.teacher.path), "no teacher: give --teacher DIR (or teacher.path=...)")
    for name, m in (("teacher", cfg.teacher), ("student", cfg.student)):
        need(m.dtype in ("auto", "float32", "bfloat16"), f"{name}.dtype {m.dtype!r}: use auto, float32 or bfloat16")
        for key in ("path", "tokenizer"):
            p = getattr(m, key)
            if p and p.startswith((".", "/")) and not Path(p).exists():  # a local path, not a hub id
                errors.append(f"{name}.{key} {p}: no such directory")
    need(not (cfg.mode == "on_policy" and d.dataset), "data.dataset (--data) reuses teacher text, which on-policy "
         "distillation does not use (the student samples itself); drop --data or --on-policy")
    need(s.n >= 1, "sample.n must be >= 1")
    need(s.temperature > 0 and 0 < s.top_p <= 1, "sample.temperature must be > 0 and sample.top_p in (0, 1]")
    need(s.max_new_tokens > 0 and s.batch_size >= 1, "sample.max_new_tokens and sample.batch_size must be positive")
    need(f.format in FORMATS, f"filter.format {f.format!r}: use one of {', '.join(FORMATS)}")
    need(f.max_per_prompt >= 0 and d.max_prompts >= 0,
         "filter.max_per_prompt and data.max_prompts must be >= 0 (0 = no limit)")
    need(d.on_bad_row in ("error", "skip"), f"data.on_bad_row {d.on_bad_row!r}: use error or skip")
    need(d.template in ("r1_zero", "chat", "none") or "{prompt}" in d.template,
         f"data.template {d.template!r}: use r1_zero, chat, none, or a string containing {{prompt}}")
    need(op.steps >= 1 and op.prompts_per_step >= 1 and op.samples_per_prompt >= 1,
         "on_policy.steps, on_policy.prompts_per_step and on_policy.samples_per_prompt must be >= 1")
    need(op.lr > 0 and op.temperature > 0 and 0 < op.top_p <= 1,
         "on_policy.lr and on_policy.temperature must be > 0, on_policy.top_p in (0, 1]")
    need(op.max_new_tokens > 0 and op.micro_batch_size >= 1,
         "on_policy.max_new_tokens and on_policy.micro_batch_size must be positive")
    need(op.max_grad_norm >= 0 and op.warmup_steps >= 0 and op.save_every >= 0 and op.keep_checkpoints >= 1,
         "on_policy.max_grad_norm, warmup_steps, save_every must be >= 0 and keep_checkpoints >= 1")
    need(e.size >= 0 and e.every >= 0 and e.samples >= 1 and e.max_new_tokens > 0 and e.batch_size >= 1,
         "eval.size and eval.every must be >= 0; eval.samples, max_new_tokens, batch_size positive")
    need(e.temperature > 0 and 0 < e.top_p <= 1,
         "eval.temperature must be > 0 (the R1 protocol samples) and eval.top_p in (0, 1]")
    if cfg.mode == "sft":
        from .sft import validate_sft

        defaults = _default_sft()
        for (section, key), instead in _SFT_OWNED.items():
            if getattr(getattr(cfg.sft, section), key) != getattr(getattr(defaults, section), key):
                errors.append(f"sft.{section}.{key} is set by distill; set {instead} instead")
        try:  # the SFT settings are checked now, not after hours of teacher sampling
            validate_sft(sft_config(cfg, "distill.jsonl"))
        except ConfigError as err:
            errors += [re.sub(r"\b(model|data|optim|train)\.", r"sft.\1.", line.strip()[2:])
                       for line in str(err).splitlines()[1:]]
    if errors:
        raise ConfigError("invalid distill configuration:\n  - " + "\n  - ".join(errors))


def sft_config(cfg: DistillConfig, train: str | Path):
    """The student's SFT run: cfg.sft with the student, the template and the distilled data filled in."""
    s = copy.deepcopy(cfg.sft)
    s.model.path, s.model.tokenizer = cfg.student.path, cfg.student.tokenizer
    s.model.device, s.model.dtype = cfg.student.device, cfg.student.dtype
    s.data.train, s.data.template = str(train), cfg.data.template
    s.train.progress = s.train.progress and cfg.run.progress
    return s


def load_distill_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DistillConfig:
    cfg = load_into(DistillConfig(), path, overrides)
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------------- the run


def evaluate_model(model, tokenizer, rows: list[dict], cfg: DistillConfig, stop: list[str], seed: int) -> dict:
    """Held-out accuracy and format rate of a model by the R1 protocol (`thinkrl.evaluate`)."""
    from .evaluate import evaluate
    from .rollout import HFEngine
    from .template import render

    if not rows:
        return {}
    context = getattr(model.config, "max_position_embeddings", None) or 10**9
    prompts = [tokenizer(render(r["question"], cfg.data.template, tokenizer), add_special_tokens=False)["input_ids"]
               for r in rows]
    fits = [i for i, p in enumerate(prompts) if len(p) + cfg.eval.max_new_tokens <= context]
    engine = HFEngine(model, tokenizer, next(model.parameters()).device)
    shim = SimpleNamespace(eval=cfg.eval, rollout=SimpleNamespace(stop=list(stop)))
    return evaluate(engine, [prompts[i] for i in fits], [rows[i] for i in fits], shim, seed)


def _evaluate_path(path: str, tok_path: str | None, rows, cfg: DistillConfig) -> dict:
    from .policy import load_model, load_tokenizer, resolve_device

    if not rows:
        return {}
    model = load_model(path, resolve_device(cfg.student.device), requires_grad=False)
    return evaluate_model(model, load_tokenizer(tok_path or path), rows, cfg, cfg.sample.stop, cfg.run.seed + 1)


def run_distill(cfg: DistillConfig, out_dir: str | Path, resume: bool = False) -> dict:
    """Distil the teacher into the student (docs/R1-PIPELINE.md §Distillation); returns the
    summary written to OUT/summary.json."""
    import torch

    validate(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    (out / "config.yaml").write_text(to_yaml(cfg))
    if cfg.mode == "on_policy":
        from .distill_onpolicy import run_on_policy

        return run_on_policy(cfg, out, resume=resume)
    from .policy import load_tokenizer
    from .sft import run_sft

    t0 = time.time()
    prompts, held = load_prompts(cfg.data, cfg.eval.size)
    data_path, filter_path = out / "distill.jsonl", out / "filter.json"
    if resume and data_path.exists() and filter_path.exists():  # the samples of the interrupted run
        counts = json.loads(filter_path.read_text())
        log.info("distill: resuming with the %d samples of %s", counts["kept"], data_path)
    else:
        student_tok = load_tokenizer(cfg.student.tokenizer or cfg.student.path)  # a wrong path fails before sampling
        samples = teacher_samples(cfg, prompts)
        kept, dropped = filter_samples(samples, cfg.filter, student_tok)
        log.info("distill: kept %d of %d samples; dropped %s", len(kept), len(samples), dropped or "none")
        if not kept:
            raise DataError(f"no sample survived the filter (dropped by reason: {dropped}); sample more (sample.n), "
                            "loosen filter.format, or check the teacher and the answers")
        data_path.write_text("".join(json.dumps(distill_row(s)) + "\n" for s in kept))
        counts = {"samples": len(samples), "kept": len(kept), "dropped": dropped,
                  "prompts_with_a_kept_sample": len({s["prompt_id"] for s in kept}),
                  "samples_checked_for_correctness": sum("answer" in s for s in samples) if cfg.filter.correct else 0,
                  "sample_seconds": round(time.time() - t0, 1)}
        filter_path.write_text(json.dumps(counts, indent=2))

    before = _evaluate_path(cfg.student.path, cfg.student.tokenizer, held, cfg)
    sft_result = run_sft(sft_config(cfg, data_path), out / "sft", resume=resume)
    student_dir = out / "student"
    if sft_result["final_dir"]:  # moved, not copied: a large student's weights are written once
        shutil.rmtree(student_dir, ignore_errors=True)
        os.replace(sft_result["final_dir"], student_dir)
    after = _evaluate_path(str(student_dir), None, held, cfg) if sft_result["final_dir"] else {}
    summary = {
        "mode": "sft", "teacher": cfg.teacher.path, "student": cfg.student.path, "prompts": len(prompts), **counts,
        "distill_jsonl": str(data_path), "student_dir": str(student_dir) if sft_result["final_dir"] else None,
        "sft": {k: v for k, v in sft_result.items() if k != "final_dir"},
        "eval_prompts": len(held),
        "student_before": {k: before[k] for k in ("eval/accuracy", "eval/format_rate") if k in before},
        "student_after": {k: after[k] for k in ("eval/accuracy", "eval/format_rate") if k in after},
        "seconds": round(time.time() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="thinkrl distill", description="Distil a teacher into a student: SFT on the "
                                 "teacher's filtered samples (R1), or on-policy by reverse KL (--on-policy).")
    ap.add_argument("--teacher", help="teacher model: a directory, a hub id or 'embedded'")
    ap.add_argument("--student", help="student model directory or hub id (its own tokenizer)")
    ap.add_argument("--prompts", help="JSONL of question[/answer] rows, or 'embedded'")
    ap.add_argument("--data", help="reuse this prompt/response JSONL (e.g. stage 3's) instead of sampling the teacher")
    ap.add_argument("--out", help="output directory (default runs/distill-TIME)")
    ap.add_argument("--on-policy", action="store_true", help="reverse-KL on-policy distillation (same tokenizer)")
    ap.add_argument("--config", help="YAML config (sections: mode, teacher, student, data, sample, filter, sft, "
                    "on_policy, eval, run)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    ap.add_argument("--overwrite", action="store_true", help="replace the thinkrl run already in --out")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("overrides", nargs="*", help="section.key=value, e.g. sample.n=8 sft.optim.lr=1e-4")
    args = ap.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_claimed("distill", args, _distill_command)  # the run directory is this run's alone


def _distill_command(args, out: Path, config: str | None) -> int:
    try:
        cfg = load_into(DistillConfig(), config, args.overrides)
        for value, (section, key) in ((args.teacher, ("teacher", "path")), (args.student, ("student", "path")),
                                      (args.prompts, ("data", "prompts")), (args.data, ("data", "dataset"))):
            if value is not None:
                setattr(getattr(cfg, section), key, value)
        if args.on_policy:
            cfg.mode = "on_policy"
        if args.no_progress:
            cfg.run.progress = False
        validate(cfg)
        summary = run_distill(cfg, out, resume=args.resume)
    except (ConfigError, DataError, DistillError, OSError) as e:
        print(f"thinkrl distill: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    if summary.get("interrupted") or summary.get("sft", {}).get("interrupted"):
        print(f"thinkrl distill: stopped early; continue with --resume --out {out}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
