"""The settings of `thinkrl distill` (`DistillConfig`: teacher, student, data, sample, filter,
sft, on_policy, eval, run), the checks run before any model is loaded (`validate`, the
student's SFT settings included), and the student's SFT run made from them (`sft_config`)."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..adapters import lora_problems
from ..sections import ModelSection, RunOptions, Sampling, TrainedModel
from ..config import ConfigError
from ..config_io import load_into
from ..sections import EvalProtocol
from ..train.sft_config import SFTConfig, validate_sft


FORMATS = ("format", "format_lenient", "none")


ModelRef = ModelSection  # the teacher: the shared model section (the student is a TrainedModel: plus lora)


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
class TeacherSampling(Sampling):
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
    gradient_checkpointing: bool = False  # recompute the student's activations in the backward pass: less memory
    save_every: int = 50  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2
    max_bad_steps: int = 5  # stop after this many consecutive steps skipped for a NaN/inf reverse KL or gradient


@dataclass
class DistillEvalConfig(EvalProtocol):
    """The student's held-out evaluation: the R1 protocol (`sections.EvalProtocol`), on how many prompts, when."""
    size: int = 100  # held-out prompts (0 = no evaluation)
    every: int = 25  # on-policy: evaluate every N steps (and at start and end); 0 = start/end only


RunConfig = RunOptions  # the run section every command shares


class DistillError(ValueError):
    """A distillation that cannot run as asked; the message says what to do instead."""


def _default_sft():
    return SFTConfig()


@dataclass
class DistillConfig:
    mode: str = "sft"  # sft (the R1 recipe) | on_policy
    teacher: ModelRef = field(default_factory=ModelRef)
    student: TrainedModel = field(default_factory=lambda: TrainedModel(path=""))  # student.lora: adapters
    data: DistillDataConfig = field(default_factory=DistillDataConfig)
    sample: TeacherSampling = field(default_factory=TeacherSampling)
    filter: FilterConfig = field(default_factory=FilterConfig)
    # the SFT of the student (thinkrl.train.sft.SFTConfig); model and training data are set by distill
    sft: Any = field(default_factory=_default_sft)
    on_policy: OnPolicyConfig = field(default_factory=OnPolicyConfig)
    eval: DistillEvalConfig = field(default_factory=DistillEvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


# the SFT settings distill fills in itself, and where the user sets them instead
_SFT_OWNED = {("model", "path"): "student.path (--student)", ("model", "tokenizer"): "student.tokenizer",
              ("model", "device"): "student.device", ("model", "dtype"): "student.dtype",
              ("model", "lora"): "student.lora",
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
    need(op.max_bad_steps >= 1, "on_policy.max_bad_steps must be >= 1")
    errors += lora_problems(cfg.student.lora, "student.lora")
    need(e.size >= 0 and e.every >= 0 and e.samples >= 1 and e.max_new_tokens > 0 and e.batch_size >= 1,
         "eval.size and eval.every must be >= 0; eval.samples, max_new_tokens, batch_size positive")
    need(e.temperature > 0 and 0 < e.top_p <= 1,
         "eval.temperature must be > 0 (the R1 protocol samples) and eval.top_p in (0, 1]")
    if cfg.mode == "sft":
        defaults = _default_sft()
        for (section, key), instead in _SFT_OWNED.items():
            if getattr(getattr(cfg.sft, section), key) != getattr(getattr(defaults, section), key):
                errors.append(f"sft.{section}.{key} is set by distill; set {instead} instead")
        try:  # the SFT settings are checked now, not after hours of teacher sampling
            validate_sft(sft_config(cfg, "distill.jsonl"))
        except ConfigError as err:
            errors += [re.sub(r"\b(model|data|optim|train)\.", r"sft.\1.", line.strip()[2:])
                       for line in str(err).splitlines()[1:] if "model.lora" not in line]  # said as student.lora
    if errors:
        raise ConfigError("invalid distill configuration:\n  - " + "\n  - ".join(errors))


def sft_config(cfg: DistillConfig, train: str | Path):
    """The student's SFT run: cfg.sft with the student, the template and the distilled data filled in."""
    s = copy.deepcopy(cfg.sft)
    s.model.path, s.model.tokenizer = cfg.student.path, cfg.student.tokenizer
    s.model.device, s.model.dtype = cfg.student.device, cfg.student.dtype
    s.model.lora = copy.deepcopy(cfg.student.lora)
    s.data.train, s.data.template = str(train), cfg.data.template
    s.run.progress = s.run.progress and cfg.run.progress
    return s


def load_distill_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DistillConfig:
    cfg = load_into(DistillConfig(), path, overrides)
    validate(cfg)
    return cfg
