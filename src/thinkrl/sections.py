"""Config sections that several commands share, declared once.

`EvalProtocol` is the R1 evaluation protocol's sampling: answers are sampled (temperature
0.6, top-p 0.95), never greedy, `samples` per question, and accuracy is their mean (pass@1).
GRPO's `eval` section (`config.EvalConfig`), distillation's (`distill.config.DistillEvalConfig`)
and `thinkrl eval` (`evaluation.run.EvalSettings`) extend it with their own keys.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalProtocol:
    temperature: float = 0.6  # R1 protocol: sampling, never greedy
    top_p: float = 0.95
    samples: int = 1  # samples per question; accuracy is their mean (pass@1)
    max_new_tokens: int = 80
    batch_size: int = 300  # completions per generate call
