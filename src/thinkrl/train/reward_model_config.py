"""The settings of `thinkrl rm` (`RMConfig`: model, data, train, log), their defaults and the
checks run before anything is loaded (`validate`, `load_rm_config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..sections import ModelSection, RunOptions, run_problems
from ..config import ConfigError
from ..config_io import load_into
from ..template import render

PARTS = ("whole", "summary")
RULES = ("auto", "none", "helpfulness", "harmlessness")
OBJECTIVES = ("pairwise", "step")
SYNTHETIC = {"synthetic:helpfulness": "pairwise", "synthetic:harmlessness": "pairwise", "synthetic:steps": "step"}


@dataclass
class RMModelConfig(ModelSection):  # path: the model to start from; with init=random, whose architecture and
    #                                      vocabulary a fresh model takes
    init: str = "random"  # pretrained: path's weights (LM head replaced) | random: a fresh model sized below
    layers: int = 2  # pretrained: keep the first N decoder layers; random: N layers; 0 = as many as path has
    hidden_size: int = 32  # random only: the width (MLP 4×, path's head count); 0 = path's
    template: str = "none"  # how a question becomes the prompt the RM reads (thinkrl.template.render): the bare
    #                         question; r1_zero (the policy's prompt) put 85 uninformative tokens in front and cost
    #                         the tiny model 0.953 -> 0.900 held-out accuracy at twice the time
    attention: str = "auto"  # transformers attention: auto (eager on CPU, where it made tiny-model steps ~30% faster
    #                          than sdpa; the model's default elsewhere) | eager | sdpa


@dataclass
class RMDataConfig:
    # train/test pairs {prompt, chosen, rejected} (train.objective=pairwise) or step-labelled completions
    # {prompt or question, completion, steps: [{end, label}]} (train.objective=step): JSONL, JSON, parquet, a
    # save_to_disk dir or hf:ID[?config=&split=]
    train: str = "synthetic:helpfulness"  # data (split "train" unless named), or synthetic:helpfulness|harmlessness
    #                                       (pairs, thinkrl.task.general) | synthetic:steps (the embedded task's
    #                                       step-labelled traces, thinkrl.task.steps)
    test: str = "synthetic"  # data (split "test") | synthetic (held-out synthetic rows) | split (test_share) | none
    part: str = "whole"  # what of a response is scored: whole | summary (after the last </think>)
    rule: str = "auto"  # rule to check held-out scores against: helpfulness | harmlessness | none | auto (synthetic's)
    synthetic_train: int = 10000  # pairs (or step-labelled traces) made for synthetic:...
    synthetic_test: int = 300
    synthetic_seed: int = 0
    synthetic_corrupt: float = 0.25  # synthetic:steps: share of traces with one sum digit changed (wrong steps
    #                                  that are not a forgotten carry)
    test_share: float = 0.1  # for test: split
    max_tokens: int = 0  # longer pairs are skipped (counted); 0 = the model's context
    on_bad_row: str = "error"  # a malformed line: error (file:line) | skip (counted)


@dataclass
class RMTrainConfig:
    objective: str = "pairwise"  # pairwise: an outcome RM, Bradley-Terry on preference pairs | step: a process RM,
    #                              binary cross-entropy of sigmoid(score) at each step's last token against its label
    steps: int = 1500
    batch_size: int = 32  # pairs per step (2× as many sequences); train.objective=step: completions per step
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    schedule: str = "cosine"  # constant | linear | cosine (after warm-up)
    max_grad_norm: float = 1.0
    eval_every: int = 250  # held-out accuracy every N steps (and at the end); 0 = at the end only
    eval_batch_size: int = 256  # sequences per scoring forward
    max_bad_steps: int = 5  # stop after this many consecutive steps skipped for a NaN/inf loss or gradient
    save_every: int = 250  # checkpoint every N steps (and at the end, or on Ctrl-C); 0 = at the end only
    keep_checkpoints: int = 2  # the newest N checkpoints are kept (--resume continues from the newest)


@dataclass
class RMLogConfig:
    tensorboard: bool = False
    wandb_project: str | None = None


@dataclass
class RMConfig:
    model: RMModelConfig = field(default_factory=RMModelConfig)
    data: RMDataConfig = field(default_factory=RMDataConfig)
    train: RMTrainConfig = field(default_factory=RMTrainConfig)
    log: RMLogConfig = field(default_factory=RMLogConfig)
    run: RunOptions = field(default_factory=RunOptions)


def validate(cfg: RMConfig) -> None:
    errors = []
    d, t, m = cfg.data, cfg.train, cfg.model

    def need(cond, msg):
        if not cond:
            errors.append(msg)

    need(d.part in PARTS, f"data.part {d.part!r}: use whole (the response, reasoning included) or summary "
         "(the text after the last </think>)")
    need(d.rule in RULES, f"data.rule {d.rule!r}: use one of {', '.join(RULES)}")
    synthetic = d.train.startswith("synthetic:")
    need(not synthetic or d.train in SYNTHETIC,
         f"data.train {d.train!r}: the synthetic sets are {', '.join(SYNTHETIC)}")
    need(bool(d.train.strip()), "data.train is empty: give a JSONL of {prompt, chosen, rejected} or "
         "synthetic:helpfulness")
    need(t.objective in OBJECTIVES, f"train.objective {t.objective!r}: use pairwise (an outcome reward model on "
         "preference pairs) or step (a process reward model on step-labelled completions)")
    if synthetic and d.train in SYNTHETIC and t.objective in OBJECTIVES and SYNTHETIC[d.train] != t.objective:
        what = "step-labelled completions" if SYNTHETIC[d.train] == "step" else "preference pairs"
        errors.append(f"data.train={d.train} is {what}: set train.objective={SYNTHETIC[d.train]}")
    if t.objective == "step":
        need(d.part == "whole", f"data.part={d.part}: a process reward model reads each step where it ends in the "
             "whole completion; set data.part=whole")
        need(d.rule in ("auto", "none"), f"data.rule={d.rule} checks preference pairs; with train.objective=step "
             "set data.rule=none (or auto)")
    need(0 <= d.synthetic_corrupt <= 1, f"data.synthetic_corrupt={d.synthetic_corrupt} must be in [0, 1]")
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
    errors += run_problems(cfg.run)
    need(t.max_bad_steps >= 1, "train.max_bad_steps must be >= 1")
    need(t.save_every >= 0, "train.save_every must be >= 0 (0 = a checkpoint at the end only)")
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1")
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
