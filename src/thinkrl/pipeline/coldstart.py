"""Stage 1 of DeepSeek-R1 (docs/R1-PIPELINE.md §The four stages): the cold-start set, long
chains of thought in a readable form, for the SFT that precedes reasoning RL.

The paper made it "using few-shot prompting with a long CoT as an example, directly
prompting models to generate detailed answers with reflection and verification, gathering
DeepSeek-R1-Zero outputs in a readable format, and refining the results through
post-processing by human annotators", and defined the readable format as
`|special_token|<reasoning_process>|special_token|<summary>` (DeepSeek-R1 §2.3.1). Two modes:

- `refine`: sample from an R1-Zero checkpoint (or any model) with the R1-Zero template,
  keep completions that are well formed (the strict `format` reward) and correct (the
  `accuracy` reward), and rewrite each into the readable form (`readable`).
- `few_shot`: the prompt holds `shots` worked examples in the readable form, each a long
  chain of thought with a verification step then a summary, then the question; completions
  that are correct and well formed (`format_lenient`: a summary may sit between the
  blocks) are kept, rewritten into the same readable form.

What "readable" means here, concretely (`readable`): the reasoning inside the one
<think>…</think> block is kept, with whitespace normalised; everything outside the tags is
dropped; a reasoning with a stray token or a step written twice in a row is dropped
(`unclean_steps`, the readability rule's checks of the reasoning, `rewards.readability`); the
language of the reasoning is left as it is, which stage 2's language reward is for; the result
is rebuilt as `ReadableConfig.template`, by default

    ` <think>{reasoning}</think> So the answer is {answer}. <answer>{answer}</answer>`

which ends with the answer block, so the accuracy reward still reads it. It is short on
purpose: the tiny tokenizer spends about one token per letter.

Human review is the one part not automated; `coldstart.jsonl` is what a reviewer would read.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..config_io import load_into, to_yaml
from ..data import DataError, load_dataset
from ..sections import RunOptions, Sampling, run_problems
from .readable import (ReadableConfig, build_few_shot_rows, embedded_worked_example, few_shot_prompt,
                       load_worked_examples, readable, validate_readable)

log = logging.getLogger("thinkrl.pipeline")

# the readable form and the few-shot prompts live in thinkrl.pipeline.readable; they are importable from here as well
__all__ = ["ColdStartConfig", "FewShotConfig", "KeepConfig", "PromptsConfig", "ReadableConfig", "SamplingConfig",
           "build_few_shot_rows", "embedded_worked_example", "few_shot_prompt", "format_report", "load_prompts",
           "load_worked_examples", "main", "per_prompt_histogram", "readable", "resolve_model", "run_coldstart",
           "select", "validate", "validate_prompts_sampling", "write_jsonl"]

MODES = ("refine", "few_shot")


# ---------------------------------------------------------------------------- config


@dataclass
class PromptsConfig:
    data: str = "embedded"  # "embedded" (its train split) or question/answer rows: JSONL, JSON, parquet, hf:ID, ...
    question_field: str = "question"
    answer_field: str = "answer"
    limit: int = 64  # the first N rows (0 = all)
    on_bad_row: str = "error"  # error | skip


@dataclass
class SamplingConfig(Sampling):  # temperature 1.0, top_p 1.0
    n: int = 4  # samples per prompt
    max_new_tokens: int = 120
    batch_size: int = 256  # completions per generate call
    seed: int = 0


@dataclass
class FewShotConfig:
    shots: int = 3  # worked examples per prompt (3 fit the tiny model's 512 tokens with 120 new ones)
    # "embedded": built from the embedded task's train rows (column working, a check, a summary);
    # or a JSONL of worked examples with question, reasoning, answer
    examples: str = "embedded"


@dataclass
class KeepConfig:
    max_per_prompt: int = 2  # 0 = no cap
    dedup: bool = True  # one copy of each (prompt, normalised response)
    max_tokens: int = 0  # prompt (rendered with `template`) + response must fit; 0 = the model's context
    template: str = "r1_zero"  # how the SFT stage renders the prompt


@dataclass
class ColdStartConfig:
    model: str = "embedded"  # an R1-Zero run or checkpoint directory, any model directory, or "embedded"
    mode: str = "refine"  # refine | few_shot
    device: str = "auto"
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    few_shot: FewShotConfig = field(default_factory=FewShotConfig)
    readable: ReadableConfig = field(default_factory=ReadableConfig)
    keep: KeepConfig = field(default_factory=KeepConfig)
    run: RunOptions = field(default_factory=RunOptions)  # seed: sampling.seed


def validate_prompts_sampling(p: PromptsConfig, s: SamplingConfig) -> list[str]:
    errors = []
    if p.limit < 0:
        errors.append(f"prompts.limit must be >= 0 (0 = all), got {p.limit}")
    if p.on_bad_row not in ("error", "skip"):
        errors.append(f"prompts.on_bad_row {p.on_bad_row!r}: use error or skip")
    if s.n < 1:
        errors.append(f"sampling.n must be >= 1, got {s.n}")
    if s.temperature <= 0:
        errors.append("sampling.temperature must be > 0 (samples are drawn, never greedy)")
    if not 0 < s.top_p <= 1:
        errors.append(f"sampling.top_p must be in (0, 1], got {s.top_p}")
    if s.max_new_tokens < 1:
        errors.append(f"sampling.max_new_tokens must be >= 1, got {s.max_new_tokens}")
    if s.batch_size < 1:
        errors.append(f"sampling.batch_size must be >= 1, got {s.batch_size}")
    return errors


def validate(cfg: ColdStartConfig) -> None:
    errors = validate_prompts_sampling(cfg.prompts, cfg.sampling) + validate_readable(cfg.readable)
    if cfg.mode not in MODES:
        errors.append(f"mode {cfg.mode!r}: use refine or few_shot")
    if cfg.mode == "few_shot" and cfg.few_shot.shots < 1:
        errors.append(f"few_shot.shots must be >= 1, got {cfg.few_shot.shots}")
    if cfg.keep.max_per_prompt < 0 or cfg.keep.max_tokens < 0:
        errors.append("keep.max_per_prompt and keep.max_tokens must be >= 0 (0 = no cap / the model's context)")
    errors += run_problems(cfg.run)
    t = cfg.keep.template
    if t not in ("r1_zero", "chat", "none") and "{prompt}" not in t:
        errors.append(f"keep.template {t!r}: use r1_zero, chat, none or a string with {{prompt}}")
    if errors:
        raise ConfigError("invalid cold-start configuration:\n  - " + "\n  - ".join(errors))


# ---------------------------------------------------------------------------- stage


def resolve_model(path: str) -> str:
    """A run directory (RUN/checkpoints/step_N) or a checkpoint root gives its newest verified
    checkpoint; anything else is returned as it is ("embedded", a model dir, a hub id)."""
    from ..checkpoint import latest_checkpoint

    p = Path(path)
    for root in (p / "checkpoints", p):
        if root.is_dir() and any(root.glob("step_*")):
            ckpt = latest_checkpoint(root)
            if ckpt is None:
                raise ConfigError(f"{root}: no complete checkpoint to sample from")
            return str(ckpt)
    return path


def load_prompts(p: PromptsConfig) -> list[dict]:
    """The prompt rows (question, answer, other columns), the first `limit`, each with an id."""

    rows = load_dataset(p.data, "train", p.question_field, p.answer_field, p.on_bad_row)
    if p.limit:
        rows = rows[: p.limit]
    rows = [dict(r, id=r.get("id", i)) for i, r in enumerate(rows)]
    repeated = [k for k, n in Counter(r["id"] for r in rows).items() if n > 1]
    if repeated:
        raise DataError(f"{p.data}: the id {repeated[0]!r} is used by {len([r for r in rows if r['id'] == repeated[0]])} "
                        "rows; ids name a prompt in the provenance of every sample, so they must be unique")
    return rows


def per_prompt_histogram(kept: list[dict], prompt_ids: list) -> dict[str, int]:
    """{k: number of prompts with k kept samples}, prompts with none included."""
    n = Counter(r["source"]["prompt_id"] for r in kept)
    hist = Counter(n.get(pid, 0) for pid in prompt_ids)
    return {str(k): hist[k] for k in sorted(hist)}


def select(samples: list[dict], rows: dict, cfg: ColdStartConfig, tokenizer=None, context: int | None = None):
    """The cold-start rows kept from `samples` (dicts with prompt_id, sample_index,
    completion, finish_reason) of the prompts `rows` ({prompt_id: row}), and a Counter of
    drop reasons. A sample meets the first that applies: truncated, bad_format, no_reference,
    wrong_answer, no_reasoning, unclean_steps (a stray token or a repeated step in the reasoning,
    `filters.unclean_steps`), too_long (needs `tokenizer` and the limit: keep.max_tokens or
    `context`), duplicate, over_cap."""
    from ..rewards import get_reward
    from ..rewards.math import extract_answer
    from ..template import render
    from .filters import distinct_and_capped, unclean_steps

    fmt = get_reward("format" if cfg.mode == "refine" else "format_lenient")
    completions = [s["completion"] for s in samples]
    refs = [rows[s["prompt_id"]]["answer"] for s in samples]
    formats = fmt(completions)
    accuracy = get_reward("accuracy")(completions, answer=refs)
    limit = cfg.keep.max_tokens or context
    dropped: Counter = Counter()
    candidates = []
    for s, f, acc in zip(samples, formats, accuracy):
        row = rows[s["prompt_id"]]
        reason = None
        if s.get("finish_reason") == "length":
            reason = "truncated"
        elif f != 1.0:
            reason = "bad_format"
        elif acc is None:
            reason = "no_reference"
        elif acc != 1.0:
            reason = "wrong_answer"
        text = None if reason else readable(s["completion"], extract_answer(s["completion"]), cfg.readable)
        if reason is None and text is None:
            reason = "no_reasoning"
        elif reason is None and unclean_steps(s["completion"]):
            reason = "unclean_steps"
        question = row.get("cold_question", row["question"])
        if reason is None and tokenizer is not None and limit:
            n = len(tokenizer(render(question, cfg.keep.template, tokenizer) + text, add_special_tokens=False)["input_ids"])
            if n > limit:
                reason = "too_long"
        if reason:
            dropped[reason] += 1
            continue
        candidates.append({"prompt": question, "response": text, "answer": row["answer"], "level": row.get("level"),
                           "type": "reasoning",
                           "source": {"model": s.get("model", cfg.model), "prompt_id": s["prompt_id"],
                                      "sample_index": s["sample_index"], "mode": cfg.mode}})
    kept = distinct_and_capped(candidates, lambda c: c["source"]["prompt_id"], lambda c: c["response"],
                               cfg.keep.dedup, cfg.keep.max_per_prompt, dropped)
    return kept, dropped


def write_jsonl(rows: list[dict], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def run_coldstart(cfg: ColdStartConfig, out_dir: str | Path) -> dict:
    """Sample, select and write out_dir/coldstart.jsonl and out_dir/report.json; the report."""
    import torch

    from ..policy import load_model, load_tokenizer, resolve_device
    from ..template import render
    from ..rollout.sample import SampleSettings, sample_answers  # deferred: it imports torch

    validate(cfg)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model(cfg.model)
    prompts = load_prompts(cfg.prompts)
    tok = load_tokenizer(model_path)
    lm = load_model(model_path, resolve_device(cfg.device), requires_grad=False)
    context = getattr(lm.config, "max_position_embeddings", None)
    s = cfg.sampling
    if cfg.mode == "few_shot":
        asked = {r["question"] for r in prompts}
        pool = [e for e in load_worked_examples(cfg.few_shot.examples) if e["question"] not in asked]
        sample_rows = build_few_shot_rows(prompts, pool, cfg.few_shot.shots, cfg.readable, s.seed)
        template = "none"
    else:
        sample_rows, template = prompts, "r1_zero"
    lengths = [len(tok(render(r["question"], template, tok), add_special_tokens=False)["input_ids"]) for r in sample_rows]
    fits = [context is None or n + s.max_new_tokens <= context for n in lengths]
    if not any(fits):
        hint = (f"lower few_shot.shots (now {cfg.few_shot.shots}) or " if cfg.mode == "few_shot" else "")
        raise ConfigError(f"no prompt fits the model's context of {context} tokens with sampling.max_new_tokens="
                          f"{s.max_new_tokens} (shortest prompt {min(lengths)} tokens); {hint}lower sampling.max_new_tokens")
    settings = SampleSettings(n=s.n, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                              template=template, batch_size=s.batch_size, seed=s.seed, device=cfg.device)
    samples = sample_answers(model_path, [r for r, ok in zip(sample_rows, fits) if ok], settings,
                             model_obj=lm, tokenizer=tok)
    t_sample = time.time() - t0
    kept, dropped = select(samples, {r["id"]: r for r in sample_rows}, cfg, tok, context)
    n_skipped = sum(not ok for ok in fits)
    if n_skipped:
        dropped["prompt_too_long"] += n_skipped * s.n
    write_jsonl(kept, out_dir / "coldstart.jsonl")
    sampled = len(samples) + n_skipped * s.n
    report = {
        "stage": "coldstart", "mode": cfg.mode, "model": str(model_path), "prompts": len(prompts),
        "samples_per_prompt": s.n, "sampled": sampled, "kept": len(kept),
        "kept_rate": round(len(kept) / sampled, 4) if sampled else 0.0,
        "dropped": dict(sorted(dropped.items())),
        "prompts_with_kept": len({r["source"]["prompt_id"] for r in kept}),
        "per_prompt_kept": per_prompt_histogram(kept, [r["id"] for r in prompts]),
        "prompt_tokens": {"min": min(lengths), "max": max(lengths)},
        "sampling_seconds": round(t_sample, 2), "seconds": round(time.time() - t0, 2),
        "output": str(out_dir / "coldstart.jsonl"),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "config.yaml").write_text(to_yaml(cfg))
    return report


def format_report(report: dict) -> str:
    drops = ", ".join(f"{k} {v}" for k, v in report["dropped"].items()) or "none"
    return (f"{report['stage']}: kept {report['kept']} of {report['sampled']} samples ({report['kept_rate']:.1%}) "
            f"from {report['prompts']} prompts ({report['prompts_with_kept']} with at least one); dropped: {drops}; "
            f"{report['seconds']:.1f}s -> {report['output']}")


def command(args, out: Path, config: str | None) -> int:
    """`thinkrl coldstart` (thinkrl.cli parses the arguments and claims `out`)."""
    try:
        cfg = load_into(ColdStartConfig(), config, args.overrides)
        report = run_coldstart(cfg, out)
    except (ConfigError, DataError, OSError) as e:
        print(f"thinkrl coldstart: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0
