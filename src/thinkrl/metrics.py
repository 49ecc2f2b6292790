"""Where metrics go: `metrics.jsonl` always (one line per step), TensorBoard or W&B when asked."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .rundir import write_text_atomic

REFLECTION_WORDS = ("wait", "mistake", "however", "but", "retry", "error", "verify", "wrong", "evaluate", "check")
# the same words in Chinese (R1-Zero mixed Chinese into its reasoning), counted as the English word
REFLECTION_TRANSLATIONS = {"等等": "wait", "错误": "error", "检查": "check", "验证": "verify", "但是": "but"}
_REFLECTION_RE = re.compile(r"\b(" + "|".join(REFLECTION_WORDS + tuple(REFLECTION_TRANSLATIONS)) + r")\b",
                            re.IGNORECASE)


def has_reflection(text: str) -> bool:
    """Does the text use one of the reflective words the R1 paper counted (§2.2, "aha moment")?"""
    return _REFLECTION_RE.search(text) is not None


def reflection_counts(text: str) -> dict[str, int]:
    """How many times each reflective word occurs in the text (case-insensitive, whole words;
    a Chinese one of REFLECTION_TRANSLATIONS counts as its English word)."""
    counts = dict.fromkeys(REFLECTION_WORDS, 0)
    for m in _REFLECTION_RE.finditer(text):
        word = m.group(1).lower()
        counts[REFLECTION_TRANSLATIONS.get(word, word)] += 1
    return counts


def mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def by_level(values, levels, prefix: str) -> dict:
    """{prefix/level_k: mean of values whose level is k} for every level present."""
    out = {}
    if levels is None:
        return out
    for lv in sorted({lv for lv in levels if lv is not None}, key=str):
        out[f"{prefix}/level_{lv}"] = mean([v for v, l in zip(values, levels) if l == lv])
    return out


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsWriter:
    def __init__(self, run_dir: Path, tensorboard: bool = False, wandb_project: str | None = None, config: dict | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = self.wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs `pip install thinkrl[tensorboard]`

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if wandb_project:
            import wandb  # needs `pip install thinkrl[wandb]`

            self.wandb = wandb.init(project=wandb_project, dir=str(run_dir), config=config)

    def truncate_after(self, step: int) -> None:
        """On resume: forget lines written after the checkpoint the run continues from."""
        keep = [r for r in read_metrics(self.path.parent) if r["step"] <= step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))  # a kill leaves old or new

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
            f.flush()
        step = row["step"]
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                if self.tb:
                    self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def read_metrics(run_dir: Path) -> list[dict]:
    """RUN/metrics.jsonl's rows by step (the last line of a step wins). Lines that are not
    JSON objects with an integer step, such as the half-written last line of a killed run,
    are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    rows: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool):
                rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]
