"""Distillation (DeepSeek-R1 §2.4, docs/R1-PIPELINE.md §Distillation): a smaller student
learns from a teacher's samples by SFT only, no RL.

    thinkrl distill --teacher T --student S --prompts P [--data stage3.jsonl] [--out DIR]
                    [--on-policy] [--config F] [section.key=value ...]

The R1 recipe, `mode: sft` (the default):

1. samples: the teacher answers every prompt `sample.n` times (`rollout.sample`), or an
   existing dataset of prompt/response rows is reused (`--data`, e.g. stage 3's ~800k);
2. filter: where a prompt row has a reference `answer`, only correct (accuracy reward) and
   well-formed (`filter.format`) samples are kept; truncated, duplicate and empty ones are
   dropped, at most `filter.max_per_prompt` per prompt; every drop is counted by reason;
3. SFT (`thinkrl.train.sft.run_sft`) of the student on the kept *text*. The student re-tokenizes
   it with its own tokenizer, so its architecture and vocabulary may differ from the
   teacher's (R1 distilled into Qwen2.5 and Llama-3 alike); a response the student's
   tokenizer cannot reproduce exactly is dropped (`not_representable`).

Steps 1-2 are `thinkrl.distill.data`; the config and its checks are `thinkrl.distill.config`, the held-out
evaluation `thinkrl.distill.evaluate`; this module holds the run and the CLI.

Writes OUT/distill.jsonl (prompt, response, answer, teacher, prompt_id, sample_index),
OUT/sft/ (the SFT run), OUT/student/ (the final model) and OUT/summary.json.

`mode: on_policy` (`--on-policy`, beyond the paper) trains the student on its own samples
towards the teacher's per-token distribution by reverse KL: see `thinkrl.distill.onpolicy`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from ..config import ConfigError
from ..config_io import load_into, to_yaml
from ..data import DataError
from ..rundir import write_text_atomic
from ..train.loop import restoring_threads
from .config import (DistillConfig, DistillDataConfig, DistillError, DistillEvalConfig, FilterConfig, ModelRef,
                             OnPolicyConfig, RunConfig, TeacherSampling, load_distill_config, sft_config, validate)
from .data import (dataset_samples, distill_row, filter_samples, load_prompts, read_jsonl, round_trips,
                           teacher_samples)
from .evaluate import evaluate_model, evaluate_path

log = logging.getLogger("thinkrl.distill.run")

# the settings live in thinkrl.distill.config, the data steps in thinkrl.distill.data, the held-out evaluation
# in thinkrl.distill.evaluate; they are importable from here as well
__all__ = ["DistillConfig", "DistillDataConfig", "DistillError", "DistillEvalConfig", "FilterConfig", "ModelRef",
           "OnPolicyConfig", "RunConfig", "TeacherSampling", "dataset_samples", "distill_row", "evaluate_model",
           "filter_samples", "load_distill_config", "load_prompts", "main", "read_jsonl", "round_trips", "run_distill",
           "sft_config", "teacher_samples", "validate"]

# ---------------------------------------------------------------------------- the run


@restoring_threads  # run.threads is this run's: the caller's count again after
def run_distill(cfg: DistillConfig, out_dir: str | Path, resume: bool = False) -> dict:
    """Distil the teacher into the student (docs/R1-PIPELINE.md §Distillation); returns the
    summary written to OUT/summary.json."""
    import torch

    validate(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    (out / "config.yaml").write_text(to_yaml(cfg))
    if cfg.mode == "on_policy":
        from .onpolicy import run_on_policy  # deferred: it imports torch

        return run_on_policy(cfg, out, resume=resume)
    from ..policy import load_tokenizer
    from ..train.sft import run_sft  # deferred, as policy above: they import torch

    t0 = time.time()
    prompts, held = load_prompts(cfg.data, cfg.eval.size)
    data_path, filter_path = out / "distill.jsonl", out / "filter.json"
    counts = _read_counts(filter_path) if resume and data_path.exists() else None
    if counts is not None:  # the samples of the interrupted run (both files are written whole, or not at all)
        log.info("distill: resuming with the %d samples of %s", counts["kept"], data_path)
    else:
        student_tok = load_tokenizer(cfg.student.tokenizer or cfg.student.path)  # a wrong path fails before sampling
        samples = teacher_samples(cfg, prompts)
        kept, dropped = filter_samples(samples, cfg.filter, student_tok)
        log.info("distill: kept %d of %d samples; dropped %s", len(kept), len(samples), dropped or "none")
        if not kept:
            raise DataError(f"no sample survived the filter (dropped by reason: {dropped}); sample more (sample.n), "
                            "loosen filter.format, or check the teacher and the answers")
        write_text_atomic(data_path, "".join(json.dumps(distill_row(s)) + "\n" for s in kept))
        counts = {"samples": len(samples), "kept": len(kept), "dropped": dropped,
                  "prompts_with_a_kept_sample": len({s["prompt_id"] for s in kept}),
                  "samples_checked_for_correctness": sum("answer" in s for s in samples) if cfg.filter.correct else 0,
                  "sample_seconds": round(time.time() - t0, 1)}
        write_text_atomic(filter_path, json.dumps(counts, indent=2))  # last: it marks the samples complete

    before = evaluate_path(cfg.student.path, cfg.student.tokenizer, held, cfg)
    sft_result = run_sft(sft_config(cfg, data_path), out / "sft", resume=resume)
    student_dir = out / "student"
    if sft_result["final_dir"]:  # moved, not copied: a large student's weights are written once
        shutil.rmtree(student_dir, ignore_errors=True)
        os.replace(sft_result["final_dir"], student_dir)
    after = evaluate_path(str(student_dir), None, held, cfg) if sft_result["final_dir"] else {}
    summary = {
        "mode": "sft", "teacher": cfg.teacher.path, "student": cfg.student.path, "prompts": len(prompts), **counts,
        "distill_jsonl": str(data_path), "student_dir": str(student_dir) if sft_result["final_dir"] else None,
        "sft": {k: v for k, v in sft_result.items() if k != "final_dir"},
        "eval_prompts": len(held),
        "student_before": {k: before[k] for k in ("eval/accuracy", "eval/format_rate") if k in before},
        "student_after": {k: after[k] for k in ("eval/accuracy", "eval/format_rate") if k in after},
        "seconds": round(time.time() - t0, 1),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def _read_counts(path: Path) -> dict | None:
    """The filter counts of an earlier run's samples; None where there are none to resume from."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def command(args, out: Path, config: str | None) -> int:
    """`thinkrl distill` (thinkrl.cli parses the arguments and claims `out`)."""
    try:
        cfg = load_into(DistillConfig(), config, args.overrides)
        validate(cfg)
        summary = run_distill(cfg, out, resume=args.resume)
    except (ConfigError, DataError, DistillError, OSError) as e:
        print(f"thinkrl distill: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    if summary.get("interrupted") or summary.get("sft", {}).get("interrupted"):
        print(f"thinkrl distill: stopped early; continue with --resume --out {out}", file=sys.stderr)
        return 130
    return 0

