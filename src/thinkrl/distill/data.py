"""Distillation data (DeepSeek-R1 §2.4, docs/R1-PIPELINE.md §Distillation): the prompts, the
teacher's samples of them, and the filter that keeps the ones worth teaching (R1 stage 3's
rejection sampling).

    prompts  = load_prompts(cfg.data, cfg.eval.size)       question[/answer] rows, held-out rows
    samples  = teacher_samples(cfg, prompts)               n per prompt, or an existing dataset
    kept, dropped = filter_samples(samples, cfg.filter, student_tokenizer)
    rows     = [distill_row(s) for s in kept]              the student's SFT text (prompt/response)

A sample is {prompt_id, sample_index, question, completion, finish_reason, teacher, [answer]}.
Everything stays text: the student re-tokenizes it with its own tokenizer.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .. import data
from ..data import load_dataset
from .config import DistillConfig, DistillDataConfig, FilterConfig


def read_jsonl(path: str | Path, required: tuple[str, ...], on_bad_row: str = "error") -> list[dict]:
    """JSON-object lines holding every `required` field, other columns kept as they are; a bad
    line raises DataError naming file:line, or is skipped and counted with on_bad_row="skip".

    `thinkrl.data.load_jsonl` reads question/answer rows (both required, renamed); this reads
    the rows distillation needs besides: prompts whose answer is optional, prompt/response rows."""
    hint = "map your columns with data.*_field"
    rows, _ = data.read_records(path, lambda row: data.missing_field(row, required, hint), on_bad_row,
                                empty="no usable rows")
    return [row for _, row in rows]


def load_prompts(d: DistillDataConfig, eval_size: int) -> tuple[list[dict], list[dict]]:
    """(training prompts, held-out prompts) as rows {id, question, [answer], ...}.

    Held out (data.eval): "auto" is the embedded task's test split, or for a JSONL of prompts
    its last `eval_size` rows where they all have answers; a path is a question/answer JSONL."""
    spec = d.prompts or (None if d.dataset else "embedded")
    if spec is None:
        return [], []
    embedded = spec == "embedded"
    if embedded:  # the tiny model's task: question/answer/level rows
        raw, q, a = load_dataset("embedded", "train"), "question", "answer"
    else:
        raw, q, a = read_jsonl(spec, (d.question_field,), d.on_bad_row), d.question_field, d.answer_field
    rows = []
    for i, r in enumerate(raw):
        row = {k: v for k, v in r.items() if k not in (q, a)}
        row.update(id=r.get("id", i), question=str(r[q]))
        if r.get(a) is not None:
            row["answer"] = str(r[a])
        rows.append(row)
    held: list[dict] = []
    if eval_size and d.eval == "auto":
        if embedded:
            held = load_dataset("embedded", "test")
        elif len(rows) > eval_size and all("answer" in r for r in rows[-eval_size:]):  # accuracy needs answers
            rows, held = rows[:-eval_size], rows[-eval_size:]
    elif eval_size and d.eval != "none":
        held = load_dataset(d.eval, "test", d.question_field, d.answer_field, d.on_bad_row)
    return rows[: d.max_prompts or None], held[:eval_size]


def teacher_samples(cfg: DistillConfig, prompts: list[dict]) -> list[dict]:
    """The teacher's `sample.n` samples of every prompt (`rollout.sample.sample_answers`), or
    the rows of an existing dataset (data.dataset, --data)."""
    from ..rollout.sample import SampleSettings, sample_answers  # deferred: it imports torch
    from tqdm.auto import tqdm

    from ..policy import load_tokenizer

    if cfg.data.dataset:
        return dataset_samples(cfg.data, prompts)
    s = cfg.sample
    settings = SampleSettings(n=s.n, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                              template=cfg.data.template, stop=list(s.stop), batch_size=s.batch_size,
                              seed=cfg.run.seed, device=cfg.teacher.device)
    tok = load_tokenizer(cfg.teacher.tokenizer or cfg.teacher.path)
    with tqdm(total=len(prompts), desc="teacher samples", unit="prompt", file=sys.stderr,
              disable=not cfg.run.progress) as bar:
        raw = sample_answers(cfg.teacher.path, prompts, settings, tokenizer=tok, progress=bar.update)
    return [dict(x, teacher=cfg.teacher.path, **({"answer": x["row"]["answer"]} if "answer" in x["row"] else {}))
            for x in raw]


def dataset_samples(d: DistillDataConfig, prompts: list[dict]) -> list[dict]:
    """An existing prompt/response dataset as samples; answers come from the row, else from
    the prompt rows with the same question."""
    answers = {p["question"]: p["answer"] for p in prompts if "answer" in p}
    ids: dict[str, Any] = {}
    counts: dict[Any, int] = {}
    out = []
    for r in read_jsonl(d.dataset, (d.prompt_field, d.response_field), d.on_bad_row):
        question = str(r[d.prompt_field])
        pid = r.get("prompt_id", ids.setdefault(question, len(ids)))
        answer = r.get("answer", answers.get(question))
        counts[pid] = counts.get(pid, 0) + 1
        out.append({"prompt_id": pid, "sample_index": r.get("sample_index", counts[pid] - 1),
                    "question": question, "completion": str(r[d.response_field]),
                    "finish_reason": r.get("finish_reason", "stop"),
                    "teacher": r.get("teacher", r.get("model", str(d.dataset))),
                    **({"answer": str(answer)} if answer is not None else {})})
    return out


def filter_samples(samples: list[dict], f: FilterConfig, student_tokenizer=None) -> tuple[list[dict], dict[str, int]]:
    """The samples worth distilling and the count dropped for each reason (R1 stage 3's
    rejection sampling: correct answers only, well-formed, no duplicates).

    Reasons, checked in this order: empty, truncated, wrong (accuracy 0), unverifiable (the
    reference cannot be parsed), format, not_representable (the student's tokenizer does
    not give the text back), duplicate, over_cap."""
    from ..rewards import get_reward

    reasons = [None] * len(samples)
    for i, s in enumerate(samples):
        if not s["completion"].strip():
            reasons[i] = "empty"
        elif f.drop_truncated and s.get("finish_reason") == "length":
            reasons[i] = "truncated"
    checked = [i for i, s in enumerate(samples) if reasons[i] is None and f.correct and "answer" in s]
    if checked:
        scores = get_reward("accuracy")([samples[i]["completion"] for i in checked],
                                        answer=[samples[i]["answer"] for i in checked])
        for i, v in zip(checked, scores):
            reasons[i] = "unverifiable" if v is None else ("wrong" if v < 1 else None)
    todo = [i for i in range(len(samples)) if reasons[i] is None]
    if f.format != "none" and todo:
        for i, v in zip(todo, get_reward(f.format)([samples[i]["completion"] for i in todo])):
            reasons[i] = None if v == 1 else "format"
    seen, per_prompt, kept, spelled = set(), {}, [], {}
    for i, s in enumerate(samples):
        if reasons[i] is None and student_tokenizer is not None:
            q = s["question"]
            if q not in spelled:  # a question comes back n times
                spelled[q] = round_trips(student_tokenizer, q)
            if not (spelled[q] and round_trips(student_tokenizer, s["completion"])):
                reasons[i] = "not_representable"
        key = (s["prompt_id"], s["completion"].strip())
        if reasons[i] is None and f.dedup and key in seen:
            reasons[i] = "duplicate"
        if reasons[i] is None and f.max_per_prompt and per_prompt.get(s["prompt_id"], 0) >= f.max_per_prompt:
            reasons[i] = "over_cap"
        if reasons[i] is None:
            seen.add(key)
            per_prompt[s["prompt_id"]] = per_prompt.get(s["prompt_id"], 0) + 1
            kept.append(s)
    dropped: dict[str, int] = {}
    for r in reasons:
        if r is not None:
            dropped[r] = dropped.get(r, 0) + 1
    return kept, dropped


def round_trips(tokenizer, text: str) -> bool:
    """Does the tokenizer give the text back exactly (no unknown tokens, no normalisation)?"""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) == text


def distill_row(s: dict) -> dict:
    """A kept sample as an SFT text row with its provenance."""
    row = {"prompt": s["question"], "response": s["completion"], "teacher": s["teacher"],
           "prompt_id": s["prompt_id"], "sample_index": s["sample_index"]}
    if "answer" in s:
        row["answer"] = s["answer"]
    return row
