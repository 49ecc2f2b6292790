"""The held-out evaluation of a distilled student (and of the student before), by the R1
protocol (`thinkrl.evaluation.heldout`): accuracy and format rate of sampled answers."""

from __future__ import annotations

from types import SimpleNamespace

from .config import DistillConfig
from ..template import render


def evaluate_model(model, tokenizer, rows: list[dict], cfg: DistillConfig, stop: list[str], seed: int) -> dict:
    """Held-out accuracy and format rate of a model by the R1 protocol (`thinkrl.evaluation.heldout`)."""
    from ..evaluation.heldout import evaluate  # deferred, as rollout: they import torch (`thinkrl distill` loads it when it runs)
    from ..rollout import make_engine

    if not rows:
        return {}
    prompts = [tokenizer(render(r["question"], cfg.data.template, tokenizer), add_special_tokens=False)["input_ids"]
               for r in rows]
    engine = make_engine("hf", model, tokenizer, next(model.parameters()).device)
    shim = SimpleNamespace(eval=cfg.eval, rollout=SimpleNamespace(stop=list(stop)))
    return evaluate(engine, prompts, rows, shim, seed, context=getattr(model.config, "max_position_embeddings", None) or None)


def evaluate_path(path: str, tok_path: str | None, rows, cfg: DistillConfig) -> dict:
    """`evaluate_model` of the model in `path` (nothing when there are no rows)."""
    from ..policy import load_model, load_tokenizer, resolve_device  # deferred: torch

    if not rows:
        return {}
    model = load_model(path, resolve_device(cfg.student.device), requires_grad=False)
    return evaluate_model(model, load_tokenizer(tok_path or path), rows, cfg, cfg.sample.stop, cfg.run.seed + 1)
