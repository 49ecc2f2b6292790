"""Stage 3 of DeepSeek-R1 (docs/R1-PIPELINE.md §The four stages): rejection sampling, the
data for the second SFT.

"We curate reasoning prompts and generate reasoning trajectories by performing rejection
sampling from the checkpoint from the above RL training ... For each prompt, we sample
multiple responses and retain only the correct ones", judged by rules or, where rules do
not apply, "a generative reward model by feeding the ground-truth and model predictions
into DeepSeek-V3 for judgment"; chains of thought with mixed languages, long paragraphs and
code blocks are filtered out; about 200k non-reasoning samples join the ~600k reasoning
ones (DeepSeek-R1 §2.3.3; 200k : 600k is a mix ratio of 1/3).

The steps, each its own function so that the selection can be tested on hand-made samples:

    sample_answers (N per prompt)  ->  select(samples, rows, cfg, judge)  ->  mix(kept, general, cfg)

`select` gives every sample one fate, the first that applies, in this order (cheap checks
first, so the judge only sees samples that could be kept): truncated; bad_format (the
`filters.require_format` reward, `format_lenient` by default); mixed_language;
overlong_paragraph; broken_code; unclean_steps; then correctness: `no_answer` (nothing after the
reasoning, judge mode), `unjudgeable` (the reference cannot be parsed, or a row with tests
whose sandbox failed), `malformed_verdict` (the judge's output unreadable: never accepted),
`judge_prompt_too_long` (not asked: never accepted), `wrong`; then duplicate (per prompt, `filters.dedup_key`); then
over_cap (`keep.max_per_prompt`).

`judge.method`:
- `rules`: the `accuracy` reward (1.0 needed), or for a row with `tests` the `code` reward
  with every test passing;
- `judge`: `GenerativeJudge` with `judge.model`, given the question, the reference and the
  prediction (the text after the reasoning).
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
from ..data import DataError
from ..sections import RunOptions, run_problems
from .coldstart import (PromptsConfig, SamplingConfig, format_report, load_prompts, per_prompt_histogram,
                        resolve_model, validate_prompts_sampling, write_jsonl)
from .judge import UNJUDGED, GenerativeJudge, Verdict
from .mix import load_general, mix

log = logging.getLogger("thinkrl.pipeline")

METHODS = ("rules", "judge")
NO_ANSWER = "nothing after the reasoning"
FORMATS = ("format", "format_lenient", "none")


@dataclass
class JudgeConfig:
    method: str = "rules"  # rules | judge
    answer_source: str = "answer_or_boxed"  # where the accuracy reward reads the answer (rules)
    model: str = ""  # the judge model (method judge): a directory, hub id, or "embedded"
    template: str = "none"  # how the judge prompt is given to it: none | chat | r1_zero | a string with {prompt}
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 64
    batch_size: int = 64


@dataclass
class FilterConfig:
    require_format: str = "format_lenient"  # format | format_lenient | none
    lang: str = "en"  # the chain of thought's target language (a row's `lang` column wins)
    min_language_share: float = 0.95  # mixed language below this share; 0 = off
    max_paragraph_chars: int = 2000  # 0 = off
    max_paragraph_words: int = 0  # 0 = off
    code_blocks: bool = True  # drop unbalanced fences and python blocks that do not parse
    clean_steps: bool = True  # drop a reasoning with a stray token or a repeated step (rewards.readability)


@dataclass
class RejectKeepConfig:
    max_per_prompt: int = 4  # 0 = no cap
    dedup: bool = True


@dataclass
class MixConfig:
    data: str = "none"  # JSONL of non-reasoning rows: prompt (or question), response; "none"
    ratio: float = 0.0  # non-reasoning rows = ratio × kept reasoning rows (R1: 200k/600k ≈ 0.33)


@dataclass
class RejectConfig:
    checkpoint: str = "embedded"  # the stage-2 model: a run or checkpoint directory, a model, "embedded"
    device: str = "auto"
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=8, temperature=0.7, top_p=0.95))
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    keep: RejectKeepConfig = field(default_factory=RejectKeepConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    run: RunOptions = field(default_factory=RunOptions)  # seed: the mix's draw and shuffle (sampling.seed samples)


def validate(cfg: RejectConfig) -> None:
    from ..rewards.language import LANGUAGES
    from ..rewards.math import SOURCES

    errors = validate_prompts_sampling(cfg.prompts, cfg.sampling)
    j, f, m = cfg.judge, cfg.filters, cfg.mix
    if j.method not in METHODS:
        errors.append(f"judge.method {j.method!r}: use rules or judge")
    if j.method == "judge" and not j.model:
        errors.append("judge.method is judge but judge.model is empty; give the judge model's directory, e.g. "
                      "judge.model=embedded, or use judge.method=rules")
    if j.answer_source not in SOURCES:
        errors.append(f"judge.answer_source {j.answer_source!r}: use one of {', '.join(SOURCES)}")
    if j.temperature <= 0 or not 0 < j.top_p <= 1 or j.max_new_tokens < 1 or j.batch_size < 1:
        errors.append("judge sampling needs temperature > 0, top_p in (0, 1], max_new_tokens >= 1, batch_size >= 1")
    if f.require_format not in FORMATS:
        errors.append(f"filters.require_format {f.require_format!r}: use {', '.join(FORMATS)}")
    if f.lang not in LANGUAGES:
        errors.append(f"filters.lang {f.lang!r}: supported {', '.join(LANGUAGES)}")
    if not 0 <= f.min_language_share <= 1:
        errors.append(f"filters.min_language_share must be in [0, 1] (0 = off), got {f.min_language_share}")
    if f.max_paragraph_chars < 0 or f.max_paragraph_words < 0:
        errors.append("filters.max_paragraph_chars / max_paragraph_words must be >= 0 (0 = off)")
    if cfg.keep.max_per_prompt < 0:
        errors.append("keep.max_per_prompt must be >= 0 (0 = no cap)")
    if m.ratio < 0:
        errors.append(f"mix.ratio must be >= 0, got {m.ratio}")
    if m.ratio > 0 and m.data == "none":
        errors.append(f"mix.ratio is {m.ratio} but mix.data is none; give a JSONL of prompt/response rows or set mix.ratio=0")
    errors += run_problems(cfg.run)
    if errors:
        raise ConfigError("invalid rejection-sampling configuration:\n  - " + "\n  - ".join(errors))


# ---------------------------------------------------------------------------- selection


def readability_problem(completion: str, row: dict, f: FilterConfig) -> tuple[str, str] | None:
    """(drop reason, detail) from the first readability filter the completion fails, or None."""
    from . import filters

    if f.min_language_share > 0:
        why = filters.mixed_language(completion, row.get("lang") or f.lang, f.min_language_share)
        if why:
            return "mixed_language", why
    why = filters.overlong_paragraph(completion, f.max_paragraph_chars, f.max_paragraph_words)
    if why:
        return "overlong_paragraph", why
    if f.code_blocks:
        why = filters.broken_code(completion)
        if why:
            return "broken_code", why
    if f.clean_steps:
        why = filters.unclean_steps(completion)
        if why:
            return "unclean_steps", why
    return None


def rule_verdicts(samples: list[dict], rows: dict, cfg: RejectConfig) -> list[Verdict]:
    """Correctness by rules: the code reward (all tests pass) for rows with tests, the accuracy
    reward otherwise. None when not applicable (a reference that does not parse)."""
    from ..rewards import get_reward

    out: list[Verdict | None] = [None] * len(samples)
    code = [i for i, s in enumerate(samples) if rows[s["prompt_id"]].get("tests")]
    math = sorted(set(range(len(samples))) - set(code))
    if math:
        scores = get_reward("accuracy").scores([samples[i]["completion"] for i in math],
                                               answer=[rows[samples[i]["prompt_id"]].get("answer") for i in math],
                                               source=cfg.judge.answer_source)
        for i, s in zip(math, scores):
            out[i] = Verdict(None if s.value is None else s.value == 1.0, s.reason)
    if code:
        picked = [rows[samples[i]["prompt_id"]] for i in code]  # the prompt's helpers are the judge's own
        scores = get_reward("code").scores([samples[i]["completion"] for i in code], mode="all",
                                           tests=[r["tests"] for r in picked], entry_point=[r.get("entry_point") for r in picked],
                                           prompt=[r.get("prompt") or r.get("question") for r in picked])
        for i, s in zip(code, scores):
            out[i] = Verdict(None if s.value is None else s.value == 1.0, s.reason)
    return out  # type: ignore[return-value]


def judge_verdicts(samples: list[dict], rows: dict, judge) -> list[Verdict]:
    """Correctness by a generative judge over (question, reference, prediction); the
    prediction is what follows the reasoning. A sample with nothing there is not asked."""
    from ..rewards.math import _outside_reasoning

    out: list[Verdict | None] = [None] * len(samples)
    ask = []
    for i, s in enumerate(samples):
        prediction = _outside_reasoning(s["completion"]).strip()
        if prediction:
            ask.append((i, prediction))
        else:
            out[i] = Verdict(False, NO_ANSWER)
    if ask:
        verdicts = judge.judge([rows[samples[i]["prompt_id"]]["question"] for i, _ in ask],
                               [str(rows[samples[i]["prompt_id"]].get("answer", "")) for i, _ in ask],
                               [p for _, p in ask])
        for (i, _), v in zip(ask, verdicts):
            out[i] = v
    return out  # type: ignore[return-value]


def select(samples: list[dict], rows: dict, cfg: RejectConfig, judge=None) -> tuple[list[dict], Counter]:
    """The reasoning rows kept from `samples` (dicts with prompt_id, sample_index, completion,
    optional finish_reason and model) of the prompts `rows` ({prompt_id: row with question,
    answer, optional level/tests/lang}), and a Counter of drop reasons (module docstring for
    the order). `judge` (an object with `.judge(questions, references, predictions)`) is
    needed when cfg.judge.method is "judge"."""
    from ..rewards import get_reward
    from .filters import distinct_and_capped

    if cfg.judge.method == "judge" and judge is None:
        raise ValueError("judge.method is judge: pass the GenerativeJudge to select()")
    dropped: Counter = Counter()
    fmt = get_reward(cfg.filters.require_format) if cfg.filters.require_format != "none" else None
    formats = fmt([s["completion"] for s in samples]) if fmt else [1.0] * len(samples)
    passing = []
    for s, f in zip(samples, formats):
        row = rows[s["prompt_id"]]
        if s.get("finish_reason") == "length":
            dropped["truncated"] += 1
        elif f != 1.0:
            dropped["bad_format"] += 1
        elif (problem := readability_problem(s["completion"], row, cfg.filters)) is not None:
            dropped[problem[0]] += 1
        else:
            passing.append(s)
    if cfg.judge.method == "rules":
        verdicts, how = rule_verdicts(passing, rows, cfg), None
    else:
        verdicts, how = judge_verdicts(passing, rows, judge), f"judge:{getattr(judge, 'name', 'model')}"
    correct = []
    for s, v in zip(passing, verdicts):
        if v.correct is True:
            correct.append(s)
        elif v.reason == NO_ANSWER:
            dropped["no_answer"] += 1
        elif v.correct is None and cfg.judge.method == "judge":
            dropped["judge_prompt_too_long" if v.reason.startswith(UNJUDGED) else "malformed_verdict"] += 1
        elif v.correct is None:
            dropped["unjudgeable"] += 1
        else:
            dropped["wrong"] += 1
    kept = []
    for s in correct:
        row = rows[s["prompt_id"]]
        judged = how or ("rules:code" if row.get("tests") else "rules:accuracy")
        out = {"prompt": row["question"], "response": s["completion"], "type": "reasoning",
               "source": {"checkpoint": s.get("model", cfg.checkpoint), "prompt_id": s["prompt_id"],
                          "sample_index": s["sample_index"], "judge": judged}}
        for key in ("answer", "level"):
            if row.get(key) is not None:
                out[key] = row[key]
        kept.append(out)
    kept = distinct_and_capped(kept, lambda r: r["source"]["prompt_id"], lambda r: r["response"],
                               cfg.keep.dedup, cfg.keep.max_per_prompt, dropped)
    return kept, dropped


# ---------------------------------------------------------------------------- stage


def run_reject(cfg: RejectConfig, out_dir: str | Path) -> dict:
    """Sample, select, mix; write out_dir/reject.jsonl and out_dir/report.json; the report."""
    import torch

    from ..policy import load_model, load_tokenizer, resolve_device
    from ..rollout.sample import SampleSettings, sample_answers  # deferred: it imports torch

    validate(cfg)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    general = load_general(cfg.mix.data) if cfg.mix.data != "none" and cfg.mix.ratio > 0 else []
    model_path = resolve_model(cfg.checkpoint)
    prompts = load_prompts(cfg.prompts)
    s = cfg.sampling
    tok = load_tokenizer(model_path)
    lm = load_model(model_path, resolve_device(cfg.device), requires_grad=False)
    settings = SampleSettings(n=s.n, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                              template="r1_zero", batch_size=s.batch_size, seed=s.seed, device=cfg.device)
    samples = sample_answers(model_path, prompts, settings, model_obj=lm, tokenizer=tok)
    del lm
    t_sample = time.time() - t0
    judge = None
    if cfg.judge.method == "judge":
        j = cfg.judge
        judge = GenerativeJudge(j.model, template=j.template, temperature=j.temperature, top_p=j.top_p,
                                max_new_tokens=j.max_new_tokens, batch_size=j.batch_size, seed=s.seed,
                                device=cfg.device)
    kept, dropped = select(samples, {r["id"]: r for r in prompts}, cfg, judge)
    skipped = len(prompts) * s.n - len(samples)
    if skipped:
        dropped["prompt_too_long"] += skipped
    rows, mix_counts = mix(kept, general, cfg.mix.ratio, cfg.run.seed)
    write_jsonl(rows, out_dir / "reject.jsonl")
    sampled = len(prompts) * s.n
    levels: dict = {}
    for r in prompts:
        levels.setdefault(str(r.get("level")), [0, 0])[1] += s.n
    for r in kept:
        levels[str(r.get("level"))][0] += 1
    report = {
        "stage": "reject", "checkpoint": str(model_path), "judge": cfg.judge.method if judge is None else
        f"judge:{judge.name}", "prompts": len(prompts), "samples_per_prompt": s.n, "sampled": sampled,
        "kept": len(kept), "kept_rate": round(len(kept) / sampled, 4) if sampled else 0.0,
        "dropped": dict(sorted(dropped.items())),
        "malformed_verdicts": judge.counts["malformed"] if judge else 0,
        "judge_counts": dict(judge.counts) if judge else None,
        "prompts_with_kept": len({r["source"]["prompt_id"] for r in kept}),
        "per_prompt_kept": per_prompt_histogram(kept, [r["id"] for r in prompts]),
        "kept_rate_by_level": {k: round(a / b, 4) for k, (a, b) in sorted(levels.items()) if k != "None"},
        "mix": mix_counts, "rows": len(rows),
        "sampling_seconds": round(t_sample, 2), "seconds": round(time.time() - t0, 2),
        "output": str(out_dir / "reject.jsonl"),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "config.yaml").write_text(to_yaml(cfg))
    return report


def command(args, out: Path, config: str | None) -> int:
    """`thinkrl reject` (thinkrl.cli parses the arguments and claims `out`)."""
    try:
        cfg = load_into(RejectConfig(), config, args.overrides)
        report = run_reject(cfg, out)
    except (ConfigError, DataError, OSError) as e:
        print(f"thinkrl reject: {e}", file=sys.stderr)
        return 2
    m = report["mix"]
    print(format_report(report))
    print(f"reject: mix {m['reasoning']} reasoning + {m['general']} non-reasoning rows"
          + (f" ({m['short_by']} short of the {m['general_wanted']} asked)" if m["short_by"] else "")
          + (f"; {report['malformed_verdicts']} malformed judge verdicts (rejected)" if report["judge_counts"] else ""))
    return 0
