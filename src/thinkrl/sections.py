"""Config sections that several commands share, declared once.

`ModelSection` is what a command loads, `Sampling` how it samples, `RunOptions` the `run` section of every command (seed, threads, progress).
`EvalProtocol` is the R1 evaluation protocol's sampling: answers are sampled (temperature
0.6, top-p 0.95), never greedy, `samples` per question, and accuracy is their mean (pass@1).
GRPO's `eval` section (`config.EvalConfig`), distillation's (`distill.config.DistillEvalConfig`)
and `thinkrl eval` (`evaluation.run.EvalSettings`) extend it with their own keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelSection:
    """The model a command loads: GRPO's `model`, SFT's, distillation's teacher and student,
    the reward model's starting point (each may add keys of its own)."""
    path: str = "embedded"  # "embedded" (the packaged tiny model), a local directory or a hub id
    tokenizer: str | None = None  # None: path's own
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 autocast on CUDA; or float32 / bfloat16
    device: str = "auto"  # auto: cuda when available, else cpu


@dataclass
class LoraSettings:
    """Low-rank adapters (PEFT's LoRA) on a trained model: `r` 0 trains every weight."""
    r: int = 0  # adapter rank; 0 = off (full fine-tuning)
    alpha: float = 16.0  # the adapter's output is scaled by alpha / r
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # PEFT names, or all-linear
    merge: bool = False  # also write the model with the adapter merged in (loads without PEFT)


@dataclass
class TrainedModel(ModelSection):
    """The model a training command updates (GRPO's policy, SFT's model, a distillation
    student): the shared model section plus its adapters."""
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class Sampling:
    """How completions are drawn (each command's sampling section extends it: GRPO's rollout,
    cold start's and rejection sampling's, the teacher's, the evaluation protocol)."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 80


@dataclass
class RunOptions:
    """The `run` section every command has: how this process runs, never what it computes
    (but the seed)."""
    seed: int = 0
    threads: int = 0  # CPU threads for torch; 0 = leave torch's default (given back when the run ends)
    progress: bool = True  # the progress bar with its live line (--no-progress: logs only)


def run_problems(r: RunOptions) -> list[str]:
    return [] if r.threads >= 0 else [f"run.threads={r.threads}: give a number of CPU threads >= 1, or 0 for "
                                      "torch's default"]


# keys that moved into the shared `run` section: an old config names the new key
MOVED = {f"{section}.{key}": f"run.{key}" for section in ("train", "log") for key in ("seed", "threads", "progress")}
MOVED.update({"threads": "run.threads", "seed": "run.seed", "progress": "run.progress"})


@dataclass
class EvalProtocol(Sampling):
    temperature: float = 0.6  # R1 protocol: sampling, never greedy
    top_p: float = 0.95
    samples: int = 1  # samples per question; accuracy is their mean (pass@1)
    max_new_tokens: int = 80
    batch_size: int = 300  # completions per generate call
