"""Typed run configuration: one source of defaults, loaded from YAML, overridden from the
command line (`section.key=value`), validated at start with messages that say what to change.

A user sets a few numbers (prompts per step, group size); everything else is derived and
printed at start. The defaults are the main job: R1-Zero on the embedded tiny model.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import checks
from .adapters import lora_problems
from .checks import ConfigError
from .rewards.settings import reward_problems
from .rewards.steps import outcome_reward_problems, step_reward_problems
from .config_io import load_into
from .sections import EvalProtocol, RunOptions, Sampling, TrainedModel, run_problems


@dataclass
class ModelConfig(TrainedModel):
    template: str = "r1_zero"  # r1_zero (verbatim R1-Zero prompt), chat, none, or a string with {prompt}


@dataclass
class DataConfig:
    # a source: "embedded", a JSONL/JSON/parquet file, a save_to_disk directory, or hf:ID[?config=NAME&split=NAME]
    train: str = "embedded"  # "embedded" or a source (a hub dataset / DatasetDict: split "train" unless named)
    eval: str = "embedded"  # "embedded", a source (split "test" unless named), or "none"
    question_field: str = "question"
    answer_field: str = "answer"
    level_field: str = "level"  # fixed: metrics are broken down by the rows' "level" field (validate says so)
    type_field: str = "type"  # optional row type column; with rewards.by_type it picks each row's rewards
    eval_size: int = 300  # at most this many held-out questions (0 = all)
    max_prompt_tokens: int = 256  # longer questions are skipped (and counted)
    on_bad_row: str = "error"  # a malformed line or a row missing a field: error (file:line) | skip (counted)


@dataclass
class RolloutConfig(Sampling):  # temperature 1.0, top_p 1.0, max_new_tokens 80
    engine: str = "hf"  # hf: batched sampling with a KV cache through transformers | ray: Ray actors (thinkrl[ray])
    workers: int = 2  # engine=ray: rollout actors, each with a copy of the policy; questions spread by whole groups
    # asynchronous rollouts: the samples a step learns from were drawn by a policy at most this many
    # versions old (generation of later steps overlaps the update); corrected by objective.tis_cap
    async_steps: int = 0
    group_size: int = 8  # G, samples per question
    top_k: int = 0  # 0 = off
    stop: list[str] = field(default_factory=lambda: ["</answer>"])
    # DAPO's dynamic sampling: groups whose rewards are all equal carry no gradient; keep sampling
    # questions until train.prompts_per_step informative groups are in, at most max_sample_rounds rounds
    dynamic_sampling: bool = False
    max_sample_rounds: int = 4


@dataclass
class ObjectiveConfig:
    beta: float = 0.0  # KL coefficient; 0 loads no reference model at all
    eps_low: float = 0.2  # clip ε
    eps_high: float | None = None  # clip-higher (DAPO uses 0.28); None = eps_low
    loss_agg: str = "grpo"  # grpo | dapo | dr_grpo (see thinkrl.objective)
    scale_std: bool | None = None  # divide advantages by the group std; None: yes unless dr_grpo
    mu: int = 1  # inner updates per batch of samples (π_old frozen for them)
    ref_reset_every: int = 0  # replace π_ref by the current policy every N steps (R1: 400); 0 = never
    sequence_ratio: bool = False  # GSPO's sequence-level ratio
    advantage: str = "outcome"  # outcome (one per completion) | process (per step: rewards.step_weights)
    tis_cap: float = 2.0  # rollout.async_steps > 0: each token's loss weighted by min(π_old/π_behaviour, tis_cap)


@dataclass
class OptimConfig:
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float = 1.0
    warmup_steps: int = 5
    schedule: str = "constant"  # constant | linear | cosine (after warm-up)


@dataclass
class RewardsConfig:
    # name (see thinkrl.rewards.REWARDS) or import path package.module:function -> weight
    weights: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0, "format": 1.0})
    # R1 stage 4: rewards per row type (data.type_field), e.g. {reasoning: {accuracy: 1, format: 1},
    # general: {helpfulness: 1, harmlessness: 1}}; rows of other types take `weights`
    by_type: dict[str, dict[str, float]] = field(default_factory=dict)
    # each reward's own keyword settings, e.g. {accuracy: {source: boxed}, language: {lang: zh}}
    params: dict[str, dict] = field(default_factory=dict)
    timeout_s: float = 60.0  # a reward's call on one step's batch; past it the batch scores on_error
    on_error: float | None = 0.0  # the score of samples whose reward raised or timed out (null: not applicable)
    isolate: bool = True  # run rewards given by import path in a worker process, killed at timeout_s
    # objective.advantage=process: step rewards (thinkrl.rewards.steps), weighted and summed per step;
    # the outcome rewards in `weights` (may be empty) join each completion's last step
    step_weights: dict[str, float] = field(default_factory=dict)
    step_split: str = ""  # "": each step reward splits a completion itself; else a regex separating steps
    workers: str = "local"  # local: this process and its worker processes | ray: Ray actors (thinkrl[ray])
    ray_actors: int = 2  # rewards.workers=ray: reward actors; each batch is spread over them


@dataclass
class TrainConfig:
    steps: int = 150
    prompts_per_step: int = 8  # questions per step; completions per step = prompts_per_step × G
    micro_batch_size: int = 64  # completions per forward/backward (gradient accumulation beyond)
    save_every: int = 50
    keep_checkpoints: int = 2
    max_bad_steps: int = 5  # stop after this many consecutive steps skipped for a NaN/inf loss, gradient or reward
    on_checkpoint_error: str = "stop"  # a checkpoint that cannot be written (disk full): stop | continue
    profile: bool = False
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time
    parallel: str = "ddp"  # several processes (torchrun): ddp (whole model on each) | fsdp (FSDP2, sharded)


@dataclass
class EvalConfig(EvalProtocol):
    """The held-out evaluation during training: the R1 protocol (`sections.EvalProtocol`), and when."""
    every: int = 15  # held-out evaluation every N steps (and at start and end); 0 = start/end only: 150 steps give 11


@dataclass
class RayConfig:
    """The Ray cluster of rollout.engine=ray and rewards.workers=ray (docs/SCALING.md)."""
    address: str = ""  # a running cluster to join ("auto", or HOST:PORT); "" starts a local one
    num_cpus: int = 0  # the local cluster's CPUs; 0 = Ray's count of this machine's


@dataclass
class LogConfig:
    tensorboard: bool = False
    wandb_project: str | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunOptions = field(default_factory=RunOptions)
    log: LogConfig = field(default_factory=LogConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def completions_per_step(self) -> int:
        return self.train.prompts_per_step * self.rollout.group_size

    @property
    def scale_std(self) -> bool:
        s = self.objective.scale_std
        return (self.objective.loss_agg != "dr_grpo") if s is None else s

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        d = self.to_dict()
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return yaml.safe_dump(d, sort_keys=False)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then command-line overrides; then validation."""
    cfg = load_into(Config(), path, overrides)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    from .objective import AGGREGATIONS

    errors = []
    r, o, t, e, opt = cfg.rollout, cfg.objective, cfg.train, cfg.eval, cfg.optim

    def need(cond, msg):
        if not cond:
            errors.append(msg)

    need(r.group_size >= 2, f"rollout.group_size is {r.group_size}: GRPO needs at least 2 samples per question "
         "to compare them (the group mean is the baseline); set rollout.group_size=8 or more")
    need(t.prompts_per_step >= 1, "train.prompts_per_step must be >= 1")
    need(t.micro_batch_size >= 1, "train.micro_batch_size must be >= 1")
    n = cfg.completions_per_step
    need(t.micro_batch_size >= n or n % t.micro_batch_size == 0,
         f"train.micro_batch_size={t.micro_batch_size} does not divide the {n} completions per step "
         f"(prompts_per_step {t.prompts_per_step} × group_size {r.group_size}); choose a divisor of {n}")
    need(r.max_new_tokens > 0, f"rollout.max_new_tokens must be positive, got {r.max_new_tokens}")
    need(e.max_new_tokens > 0, f"eval.max_new_tokens must be positive, got {e.max_new_tokens}")
    need(cfg.data.max_prompt_tokens > 0, f"data.max_prompt_tokens must be positive, got {cfg.data.max_prompt_tokens}")
    need(r.temperature > 0, "rollout.temperature must be > 0 (GRPO samples; there is no greedy rollout)")
    need(e.temperature > 0, "eval.temperature must be > 0 (the R1 protocol samples; use 0.6)")
    need(0 < r.top_p <= 1 and 0 < e.top_p <= 1, "top_p must be in (0, 1]")
    need(r.top_k >= 0, "rollout.top_k must be >= 0 (0 turns it off)")
    errors += scale_out_problems(cfg)
    need(o.loss_agg in AGGREGATIONS, f"objective.loss_agg {o.loss_agg!r} is unknown; choose one of {sorted(AGGREGATIONS)}")
    need(o.beta >= 0, "objective.beta must be >= 0")
    need(o.eps_low > 0, f"objective.eps_low={o.eps_low}: the clip ε must be positive (0.2 is usual; R1's first RL stage used 10)")
    need(o.eps_high is None or o.eps_high >= o.eps_low, "objective.eps_high must be >= objective.eps_low (clip-higher)")
    need(o.mu >= 1, "objective.mu must be >= 1")
    need(o.ref_reset_every >= 0, "objective.ref_reset_every must be >= 0")
    need(not (o.ref_reset_every and o.beta == 0),
         "objective.ref_reset_every is set but beta is 0, so there is no reference model to reset; set beta > 0 or ref_reset_every=0")
    need(opt.lr > 0, "optim.lr must be positive")
    need(opt.max_grad_norm >= 0, "optim.max_grad_norm must be >= 0 (0 turns clipping off)")
    need(opt.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
    need(opt.schedule in ("constant", "linear", "cosine"), f"optim.schedule {opt.schedule!r}: use constant, linear or cosine")
    need(t.steps >= 1, "train.steps must be >= 1")
    need(t.save_every >= 0 and e.every >= 0, "train.save_every and eval.every must be >= 0")
    need(t.max_bad_steps >= 1, "train.max_bad_steps must be >= 1")
    need(t.parallel in ("ddp", "fsdp"), f"train.parallel {t.parallel!r}: use ddp (the whole model on every process) "
         "or fsdp (parameters, gradients and optimizer state sharded over the processes)")
    need(t.on_checkpoint_error in ("stop", "continue"),
         f"train.on_checkpoint_error {t.on_checkpoint_error!r}: use stop (the default) or continue")
    need(cfg.data.on_bad_row in ("error", "skip"), f"data.on_bad_row {cfg.data.on_bad_row!r}: use error or skip")
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1 (the newest complete checkpoint is always kept)")
    need(e.samples >= 1, "eval.samples must be >= 1")
    need(cfg.model.dtype in ("auto", "float32", "bfloat16"), f"model.dtype {cfg.model.dtype!r}: use auto, float32 or bfloat16")
    errors += run_problems(cfg.run)
    errors += lora_problems(cfg.model.lora, "model.lora", objective=o, parallel=t.parallel)
    need(opt.weight_decay >= 0, "optim.weight_decay must be >= 0")
    need(all(0 <= b < 1 for b in opt.betas), f"optim.betas {list(opt.betas)}: each must be in [0, 1), e.g. [0.9, 0.99]")
    need(cfg.data.eval_size >= 0, "data.eval_size must be >= 0 (0 = all)")
    need(cfg.data.level_field == "level", f"data.level_field={cfg.data.level_field!r} is not supported: per-level "
         "metrics always read the rows' 'level' field; rename that column in your data to level and drop data.level_field")
    need(e.batch_size >= 1, "eval.batch_size must be >= 1")
    errors += checks.device_problems(cfg.model.device)
    errors += checks.model_path_problems(cfg.model.path) + checks.model_path_problems(cfg.model.tokenizer,
                                                                                     "model.tokenizer")
    errors += reward_problems(cfg.rewards, r.max_new_tokens)
    errors += supervision_problems(cfg)
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
    warn_gspo(o)


def supervision_problems(cfg: Config) -> list[str]:
    """Process supervision's and dynamic sampling's settings."""
    o, rw, r = cfg.objective, cfg.rewards, cfg.rollout
    if o.advantage not in ("outcome", "process"):
        return [f"objective.advantage {o.advantage!r}: use outcome (one advantage per completion) or process "
                "(per step, from the step rewards in rewards.step_weights)"]
    errors = outcome_reward_problems(rw.weights)
    if o.advantage == "process":
        errors += step_reward_problems(rw.step_weights, rw.params, rw.step_split)
        if not rw.step_weights:
            errors.append("objective.advantage=process needs step rewards: set rewards.step_weights, e.g. "
                          "{column_steps: 1.0} on the embedded task")
        if rw.by_type:
            errors.append("objective.advantage=process with rewards.by_type is not supported; use one of them")
        if o.sequence_ratio:
            errors.append("objective.advantage=process gives each token its own advantage; GSPO's sequence ratio "
                          "(objective.sequence_ratio) weighs whole sequences: turn one of them off")
    elif rw.step_weights:
        errors.append("rewards.step_weights are step rewards, used only with objective.advantage=process; set it, "
                      "or move outcome rewards to rewards.weights")
    if r.max_sample_rounds < 1:
        errors.append(f"rollout.max_sample_rounds={r.max_sample_rounds}: at least 1 round of sampling per step")
    return errors


def scale_out_problems(cfg: Config) -> list[str]:
    """Ray rollout and reward workers, and asynchronous rollouts."""
    import importlib.util

    r, o, rw = cfg.rollout, cfg.objective, cfg.rewards
    errors = []
    if r.engine not in ("hf", "ray"):
        errors.append(f"rollout.engine {r.engine!r} is not available; use hf (in this process) or ray (Ray actors)")
    if (r.engine == "ray" or rw.workers == "ray") and importlib.util.find_spec("ray") is None:
        errors.append("rollout.engine=ray / rewards.workers=ray need Ray, which is not installed: "
                      "pip install 'thinkrl[ray]' (or pip install ray)")
    if rw.workers not in ("local", "ray"):
        errors.append(f"rewards.workers {rw.workers!r}: use local or ray")
    if r.workers < 1 or rw.ray_actors < 1:
        errors.append("rollout.workers and rewards.ray_actors must be >= 1")
    if r.engine == "ray" and cfg.model.lora.r > 0:
        errors.append("rollout.engine=ray with model.lora is not supported yet; use rollout.engine=hf with LoRA")
    if r.async_steps < 0:
        errors.append(f"rollout.async_steps={r.async_steps}: 0 (synchronous) or more policy versions of staleness")
    if o.tis_cap <= 0:
        errors.append(f"objective.tis_cap={o.tis_cap}: the importance-weight cap must be positive (2.0 is usual)")
    if r.async_steps and r.dynamic_sampling:
        errors.append("rollout.async_steps with rollout.dynamic_sampling is not supported; turn one of them off")
    if r.async_steps and cfg.train.parallel == "fsdp":
        errors.append("rollout.async_steps with train.parallel=fsdp is not supported; use train.parallel=ddp")
    return errors


def warn_gspo(o: ObjectiveConfig) -> None:
    """GSPO's sequence ratio moves far less than a token's: warn (never change) when ε is 10x
    off the paper's or the aggregation is not its per-sequence mean (dapo, dr_grpo weight by length)."""
    eps, paper = (o.eps_low, o.eps_low if o.eps_high is None else o.eps_high), (3e-4, 4e-4)  # arXiv 2507.18071
    if o.sequence_ratio and (o.loss_agg != "grpo" or any(not p / 10 <= e <= p * 10 for e, p in zip(eps, paper))):
        logging.getLogger("thinkrl").warning(
            "objective.sequence_ratio (GSPO) with eps_low=%g, eps_high=%g, loss_agg=%s: the GSPO paper (arXiv "
            "2507.18071) uses eps_low=3e-4, eps_high=4e-4 and a per-sequence mean; set objective.eps_low=3e-4 "
            "objective.eps_high=4e-4 objective.loss_agg=grpo to follow it", *eps, o.loss_agg)


def validate_world(cfg: Config, world_size: int) -> None:
    """The checks that depend on the number of processes (torchrun --nproc_per_node ...): each
    process takes whole groups of questions, and micro-batches its own share."""
    t, r = cfg.train, cfg.rollout
    if world_size <= 1:
        return
    if r.engine == "ray":
        raise ConfigError("invalid configuration:\n  - rollout.engine=ray under torchrun: run one trainer process "
                          "(Ray spreads the sampling over its workers), or use rollout.engine=hf with torchrun")
    if r.dynamic_sampling and t.parallel == "fsdp":
        raise ConfigError("invalid configuration:\n  - rollout.dynamic_sampling with train.parallel=fsdp: each process "
                          "keeps the informative groups it drew, so the processes' batches differ in size, which "
                          "sharded forward passes cannot pair up; use train.parallel=ddp")
    if t.prompts_per_step % world_size:
        up = -(-t.prompts_per_step // world_size) * world_size
        raise ConfigError(f"invalid configuration:\n  - train.prompts_per_step={t.prompts_per_step} does not split over "
                          f"the {world_size} processes (each takes whole groups of questions); set "
                          f"train.prompts_per_step={up} (a multiple of {world_size}) or launch a number of processes "
                          f"that divides {t.prompts_per_step}")
    n = cfg.completions_per_step // world_size
    if not (t.micro_batch_size >= n or n % t.micro_batch_size == 0):
        raise ConfigError(f"invalid configuration:\n  - train.micro_batch_size={t.micro_batch_size} does not divide "
                          f"the {n} completions per process ({t.prompts_per_step} questions × group_size "
                          f"{r.group_size} over {world_size} processes); choose a divisor of {n}")


def describe(cfg: Config) -> str:
    """The derived numbers, printed at start."""
    r, t = cfg.rollout, cfg.train
    n = cfg.completions_per_step
    micro = min(t.micro_batch_size, n)
    return (
        f"{t.steps} steps × {t.prompts_per_step} questions × G={r.group_size} = {n} completions/step "
        f"(≤{r.max_new_tokens} tokens, T={r.temperature}); {n // micro} micro-batch(es) of {micro}; "
        f"μ={cfg.objective.mu}, β={cfg.objective.beta}, ε={cfg.objective.eps_low}/"
        f"{cfg.objective.eps_high or cfg.objective.eps_low}, loss={cfg.objective.loss_agg}, "
        f"std-scaled advantages={cfg.scale_std}, lr={cfg.optim.lr}" + "".join(
            f"; {part}" for part, on in [
                (f"process-supervised by {sorted(cfg.rewards.step_weights)}", cfg.objective.advantage == "process"),
                (f"dynamic sampling (≤{r.max_sample_rounds} rounds)", r.dynamic_sampling),
                (f"asynchronous rollouts ({r.async_steps} step(s) ahead, TIS cap {cfg.objective.tis_cap})",
                 r.async_steps > 0),
                (f"sampled by {r.workers} Ray worker(s)", r.engine == "ray"),
                (f"rewards scored by {cfg.rewards.ray_actors} Ray actor(s)", cfg.rewards.workers == "ray")] if on)
    )
