"""The settings of `thinkrl sft` (`SFTConfig`: model, data, optim, train), their defaults, and
the checks run before anything is loaded (`validate_sft`, `load_sft_config`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError
from ..config_io import load_into
from ..adapters import lora_problems
from ..sections import RunOptions, TrainedModel, run_problems


SFTModelConfig = TrainedModel  # the shared model section and its adapters (model.lora)


@dataclass
class SFTDataConfig:
    # train/eval: a JSONL/JSON/parquet file, a save_to_disk directory, or hf:ID[?config=NAME&split=NAME]
    train: str | None = None  # {prompt, response} or {messages} rows (required; split "train" unless named)
    eval: str | None = None  # held-out rows (split "test" unless named), or None
    eval_fraction: float = 0.0  # held out of train (seeded) when eval is None; 0 = no held-out loss
    template: str = "r1_zero"  # for prompt rows: r1_zero | chat | none | a string with {prompt}
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    max_length: int | None = None  # tokens per sample, longer ones skipped and counted; None = model context
    on_bad_row: str = "error"  # error (file:line) | skip (counted)


@dataclass
class SFTOptimConfig:
    lr: float = 1e-4  # R1 distillation: 1e-4 (1.5B student) down to 2e-5 (70B)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = 1.0  # 0 = no clipping
    warmup_steps: int = 0
    warmup_ratio: float = 0.03  # of all steps, when warmup_steps is 0
    schedule: str = "cosine"  # constant | linear | cosine (after warm-up)


@dataclass
class SFTTrainConfig:
    epochs: int = 2  # R1 stage 3: 2 epochs
    batch_size: int = 64  # samples per optimizer step (R1 distillation: 64)
    micro_batch_size: int = 8  # samples per forward/backward; gradient accumulation beyond
    packing: bool = False  # several samples per row, attention kept inside each
    pack_length: int | None = None  # tokens per packed row; None = data.max_length
    share_prefix: bool = True  # unpacked: run a micro-batch's common prompt head once (exact; ~2x on r1_zero data)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time
    save_every: int = 200  # steps; 0 = at the end only
    keep_checkpoints: int = 2
    eval_every: int = 0  # held-out loss every N steps (and at start and end); 0 = start and end only
    log_every: int = 1  # a metrics line every N steps (loss averaged over them)
    max_bad_steps: int = 5  # stop after this many consecutive steps skipped for a NaN/inf loss or gradient


@dataclass
class SFTConfig:
    model: SFTModelConfig = field(default_factory=SFTModelConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    optim: SFTOptimConfig = field(default_factory=SFTOptimConfig)
    train: SFTTrainConfig = field(default_factory=SFTTrainConfig)
    run: RunOptions = field(default_factory=RunOptions)


def validate_sft(cfg: SFTConfig) -> None:
    d, o, t = cfg.data, cfg.optim, cfg.train
    errors = []

    def need(cond, msg):
        if not cond:
            errors.append(msg)

    need(d.train is not None, "data.train is not set: give the training JSONL, e.g. --config FILE.yaml or "
         "data.train=PATH.jsonl")
    need(0 <= d.eval_fraction < 1, f"data.eval_fraction={d.eval_fraction} must be in [0, 1)")
    need(not (d.eval and d.eval_fraction > 0), "data.eval and data.eval_fraction are both set: use one held-out "
         "set (data.eval_fraction=0 with a data.eval file, or no data.eval)")
    need(d.template in ("r1_zero", "chat", "none") or "{prompt}" in d.template,
         f"data.template={d.template!r}: use r1_zero, chat, none, or a string containing {{prompt}}")
    need(d.max_length is None or d.max_length >= 2, f"data.max_length={d.max_length} must be >= 2 tokens (or null)")
    need(d.on_bad_row in ("error", "skip"), f"data.on_bad_row={d.on_bad_row!r}: use error or skip")
    need(all((d.prompt_field, d.response_field, d.messages_field)), "data.*_field names must not be empty")
    need(o.lr > 0, f"optim.lr={o.lr} must be positive")
    need(o.weight_decay >= 0, "optim.weight_decay must be >= 0")
    need(all(0 <= b < 1 for b in o.betas), f"optim.betas={list(o.betas)} must each be in [0, 1)")
    need(o.max_grad_norm >= 0, "optim.max_grad_norm must be >= 0 (0 turns clipping off)")
    need(o.warmup_steps >= 0 and 0 <= o.warmup_ratio < 1, "optim.warmup_steps must be >= 0 and optim.warmup_ratio "
         "in [0, 1)")
    need(o.schedule in ("constant", "linear", "cosine"), f"optim.schedule={o.schedule!r}: use constant, linear or "
         "cosine")
    need(t.epochs >= 1, f"train.epochs={t.epochs}: train for at least 1 epoch")
    need(t.batch_size >= 1 and t.micro_batch_size >= 1, "train.batch_size and train.micro_batch_size must be >= 1")
    if t.batch_size >= 1 and t.micro_batch_size >= 1 and t.batch_size % t.micro_batch_size:
        divisors = [k for k in range(1, t.batch_size + 1) if t.batch_size % k == 0 and k <= t.micro_batch_size]
        errors.append(f"train.batch_size={t.batch_size} is not divisible by train.micro_batch_size="
                      f"{t.micro_batch_size} (samples per step = micro-batches × micro_batch_size); set "
                      f"train.micro_batch_size={divisors[-1]} or another divisor of {t.batch_size}")
    need(t.pack_length is None or t.pack_length >= 2, f"train.pack_length={t.pack_length} must be >= 2 (or null)")
    need(not (t.pack_length and d.max_length and t.pack_length < d.max_length),
         f"train.pack_length={t.pack_length} is shorter than data.max_length={d.max_length}, so the longest samples "
         f"could not be packed; raise train.pack_length or lower data.max_length")
    need(t.save_every >= 0 and t.eval_every >= 0, "train.save_every and train.eval_every must be >= 0")
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1")
    need(t.log_every >= 1, "train.log_every must be >= 1")
    need(t.max_bad_steps >= 1, "train.max_bad_steps must be >= 1")
    errors += run_problems(cfg.run)
    errors += lora_problems(cfg.model.lora, "model.lora")
    need(cfg.model.dtype in ("auto", "float32", "bfloat16"), f"model.dtype={cfg.model.dtype!r}: use auto, float32 "
         "or bfloat16")
    if errors:
        raise ConfigError("invalid SFT configuration:\n  - " + "\n  - ".join(errors))


def load_sft_config(path: str | None = None, overrides: list[str] | None = None) -> SFTConfig:
    """Defaults, then the YAML file, then `section.key=value` overrides; then validation."""
    cfg = load_into(SFTConfig(), path, overrides)
    validate_sft(cfg)
    return cfg
