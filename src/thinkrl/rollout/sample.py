"""Sampling N answers per prompt from a checkpoint: what cold start, rejection sampling and
distillation all begin with. Each answer keeps its provenance (model, prompt id, sample index).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..policy import load_model, load_tokenizer, resolve_device
from ..sections import EvalProtocol
from ..template import render
from .engine import SamplingParams
from . import make_engine

log = logging.getLogger("thinkrl.pipeline")


@dataclass
class SampleSettings:
    n: int = 4  # samples per prompt
    temperature: float = 0.7  # R1 stage 3/4 sampled at 0.6-0.7
    top_p: float = 0.95
    max_new_tokens: int = 120
    template: str = "r1_zero"  # how a question becomes a prompt (see thinkrl.template.render)
    stop: list[str] = field(default_factory=lambda: ["</answer>"])
    batch_size: int = 256  # completions per generate call
    seed: int = 0
    device: str = "auto"

    @classmethod
    def protocol(cls, p: EvalProtocol, **kw) -> "SampleSettings":
        """The settings of an evaluation by the protocol `p` (kw: template, stop, seed, ...)."""
        return cls(n=p.samples, temperature=p.temperature, top_p=p.top_p, max_new_tokens=p.max_new_tokens,
                   batch_size=p.batch_size, **kw)


def sample_answers(model: str, rows: list[dict], s: SampleSettings, model_obj=None, tokenizer=None,
                   progress=None) -> list[dict]:
    """For every row (`question`, optional `id`), `s.n` sampled completions as dicts:
    {prompt_id, sample_index, question, completion, finish_reason, n_tokens, model, row}.

    A question whose prompt plus `max_new_tokens` does not fit the model's context is skipped
    (logged). `model_obj`/`tokenizer` reuse an already loaded model (`model` then only names it).
    Deterministic in `s.seed`."""
    dev = resolve_device(s.device)
    tok = tokenizer if tokenizer is not None else load_tokenizer(model)
    lm = model_obj if model_obj is not None else load_model(model, dev, requires_grad=False)
    engine = make_engine("hf", lm, tok, next(lm.parameters()).device)
    context = getattr(lm.config, "max_position_embeddings", None)
    return sample_with(engine, tok, rows, s, context, str(model), progress)


def sample_with(engine, tok, rows: list[dict], s: SampleSettings, context: int | None = None, model: str = "",
                progress=None, prompt_ids: list[list[int]] | None = None, generator=None) -> list[dict]:
    """`sample_answers` with a given engine: `context` (None: no limit) decides which questions
    fit; `progress(k)` after each generate call of k questions. `prompt_ids`: the rows' prompts
    already tokenized (`tok` and `s.template` then unused). `generator`: draw from it, going on
    from where it stands, instead of from a new one seeded `s.seed`."""
    prompts, kept, skipped = [], [], 0
    for i, r in enumerate(rows):
        if prompt_ids is not None:
            ids = prompt_ids[i]
        else:
            ids = tok(render(r["question"], s.template, tok), add_special_tokens=False)["input_ids"]
        if context is not None and len(ids) + s.max_new_tokens > context:
            skipped += 1
            continue
        prompts.append(ids)
        kept.append((r.get("id", i), r))
    if skipped:
        log.warning("sampling: skipped %d of %d questions that do not fit the context with %d new tokens",
                    skipped, len(rows), s.max_new_tokens)
    params = SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                            stop=list(s.stop))
    gen = generator if generator is not None else torch.Generator().manual_seed(s.seed)
    per_call = max(1, s.batch_size // s.n)
    out: list[dict] = []
    # no_grad, not inference_mode: the engine may share the weights of a policy that trains next
    with torch.no_grad():
        for start in range(0, len(kept), per_call):
            batch = kept[start: start + per_call]
            ro = engine.generate(prompts[start: start + per_call], params, generator=gen)
            for q, (pid, row) in enumerate(batch):
                for j in range(s.n):
                    k = q * s.n + j
                    out.append({"prompt_id": pid, "sample_index": j, "question": row["question"],
                                "completion": ro.texts[k], "finish_reason": ro.finish_reasons[k],
                                "n_tokens": len(ro.completion_ids[k]), "model": model, "row": row})
            if progress is not None:
                progress(len(batch))
    return out
