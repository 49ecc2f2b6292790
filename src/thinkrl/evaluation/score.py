"""`thinkrl score`: rewards applied offline to a file of completions, so that a user can check
a reward on real outputs before spending GPU hours on it.

Input: JSONL rows with `completion` (required), `prompt`, `answer` (math), `tests` (code: a
list of asserts, a HumanEval test with `entry_point`, or stdin/stdout cases), and any other
column a reward reads. Output: one JSONL row per input row, in order:

    {"line": 3, "rewards": {"accuracy": 0.0, "format": 1.0}, "reasons": {"accuracy": "5 is not 4"}}

`reasons` holds a reason for each zero or None (and for any other value its reward
explains). Step rewards (`rewards.steps`, e.g. `column_steps`) may be named beside outcome
rewards; each row then also has, per step reward, its steps in order:

    "steps": {"column_steps": [{"end": 14, "text": "<think>7+5=12", "score": 1.0, "reason": ""},
                               {"end": 21, "text": "4+8=12", "score": 0.0, "reason": "column 2: ..."}]}

`end` is the step's end offset in the completion, `text` the completion from the previous
step's end to this one (stripped of surrounding whitespace), `score` null for a step the
reward does not score. The steps are each reward's own, or the pieces of `step_split` (a
separator regex, `rewards.steps.split_steps`) when one is given. A line that is not a JSON object, or has no `completion`, gives
`{"line": N, "error": "..."}` instead, and is counted. A line that is not UTF-8 stops the
scoring with an error naming it (no output is written), as does an `--out` that is the input.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from ..data import DataError, decode_line
from ..rewards import get_reward
from ..rewards.combine import WeightedRewards
from ..rewards.steps import WeightedStepRewards, is_step_reward

BATCH = 256


def _read(path: Path):
    """(line number, row or None, error) for each non-blank line. DataError, naming the line,
    for one that is not UTF-8 (its text cannot be scored, and must not be silently replaced)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line, problem = decode_line(raw)
            if problem is not None:
                raise DataError(f"{path}:{n}: {problem}")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, None, f"not JSON: {e}"
                continue
            if not isinstance(row, dict):
                yield n, None, f"not a JSON object but {type(row).__name__}"
            elif not isinstance(row.get("completion"), str):
                yield n, None, "no `completion` string in this row"
            else:
                yield n, row, None


def score_file(rewards: list[str], data: str | Path, out: str | Path, params: dict[str, dict] | None = None,
               timeout_s: float = 60.0, step_split: str | None = None) -> dict:
    """Scores every row of `data` with each named reward, writes `out` (atomically), and
    returns a summary: {"rewards": {reward: {n, mean, zeros, not_applicable, errors,
    top_reasons}}, "step_rewards": {reward: {completions, no_steps, steps, unscored, mean,
    zeros, errors, top_reasons}}}, plus the counts of rows and of bad lines. `step_split`: the
    separator regex of the step rewards' steps (None: each reward's own)."""
    out = Path(out)
    if out.resolve() == Path(data).resolve() or (out.exists() and os.path.samefile(out, data)):
        raise ValueError(f"--out {out} is the input file {data}; write the scores to another file")
    kinds = {name: is_step_reward(get_reward(name, import_timeout_s=timeout_s)) for name in rewards}
    stepped = [name for name in rewards if kinds[name]]
    rewards = [name for name in rewards if not kinds[name]]
    if step_split and not stepped:
        raise ValueError(f"a step split ({step_split!r}) is for step rewards, and none is named")
    scorer = WeightedRewards({name: 1.0 for name in rewards}, params, timeout_s=timeout_s)
    step_scorer = WeightedStepRewards({name: 1.0 for name in stepped}, {n: p for n, p in (params or {}).items()
                                      if n in stepped}, step_split or "", timeout_s=timeout_s)
    tmp = out.with_name(out.name + ".tmp")
    summary = {name: {"n": 0, "sum": 0.0, "zeros": 0, "not_applicable": 0, "reasons": Counter()} for name in rewards}
    step_summary = {name: {"completions": 0, "no_steps": 0, "steps": 0, "unscored": 0, "sum": 0.0, "zeros": 0,
                           "reasons": Counter()} for name in stepped}
    n_rows = n_bad = 0
    pending: list[tuple[int, dict]] = []

    def flush(f):
        if not pending:
            return
        rows = [row for _, row in pending]
        completions = [row["completion"] for row in rows]
        columns = [{k: v for k, v in row.items() if k not in ("completion", "prompt")} for row in rows]
        prompts = [row.get("prompt") for row in rows]
        per = scorer.scores(completions, columns, prompts=prompts)
        per_steps = step_scorer.scores(completions, columns, prompts=prompts) if stepped else {}
        for j, (n, _) in enumerate(pending):
            values = {name: per[name][j].value for name in rewards}
            reasons = {name: per[name][j].reason for name in rewards if per[name][j].reason}
            record = {"line": n, "rewards": values, "reasons": reasons}
            if stepped:
                record["steps"] = {name: _step_rows(completions[j], per_steps[name][j], step_summary[name])
                                   for name in stepped}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            for name in rewards:
                s, v = summary[name], values[name]
                if v is None:
                    s["not_applicable"] += 1
                else:
                    s["n"] += 1
                    s["sum"] += v
                    s["zeros"] += v == 0.0
                if name in reasons:
                    s["reasons"][reasons[name]] += 1
        pending.clear()

    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for n, row, error in _read(Path(data)):
                if error is not None:
                    flush(f)
                    f.write(json.dumps({"line": n, "error": error}) + "\n")
                    n_bad += 1
                    continue
                pending.append((n, row))
                n_rows += 1
                if len(pending) >= BATCH:
                    flush(f)
            flush(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:  # no half-written output left behind, whatever stopped it
        tmp.unlink(missing_ok=True)
        raise
    result: dict = {"rows": n_rows, "bad_lines": n_bad, "rewards": {}}
    for name, s in summary.items():
        result["rewards"][name] = {"n": s["n"], "mean": s["sum"] / s["n"] if s["n"] else None, "zeros": s["zeros"],
                                   "not_applicable": s["not_applicable"], "errors": scorer.errors[name],
                                   "top_reasons": dict(s["reasons"].most_common(5))}
    if stepped:
        result["step_rewards"] = {name: {**{k: v for k, v in s.items() if k not in ("sum", "reasons")},
                                         "mean": s["sum"] / s["steps"] if s["steps"] else None,
                                         "errors": step_scorer.errors[name],
                                         "top_reasons": dict(s["reasons"].most_common(5))}
                                  for name, s in step_summary.items()}
    return result


def _step_rows(completion: str, steps: list, s: dict) -> list[dict]:
    """One completion's steps as output rows, counted into its reward's summary `s`."""
    rows, start = [], 0
    for step in steps:
        rows.append({"end": step.end, "text": completion[start:step.end].strip(), "score": step.score,
                     "reason": step.reason})
        start = step.end
        if step.score is None:
            s["unscored"] += 1
        else:
            s["steps"] += 1
            s["sum"] += step.score
            s["zeros"] += step.score == 0.0
        if step.reason:
            s["reasons"][step.reason] += 1
    s["completions"] += 1
    s["no_steps"] += all(step.score is None for step in steps)
    return rows


def format_summary(result: dict) -> str:
    lines = [f"{result['rows']} rows scored, {result['bad_lines']} bad lines"]
    if result["rewards"] or not result.get("step_rewards"):
        lines.append(f"{'reward':<28} {'n':>6} {'mean':>8} {'zeros':>6} {'n/a':>6}  most common reasons")
    for name, s in result["rewards"].items():
        mean = f"{s['mean']:.4f}" if s["mean"] is not None else "-"
        reasons = "; ".join(f"{r[:60]} ×{c}" for r, c in list(s["top_reasons"].items())[:3])
        lines.append(f"{name:<28} {s['n']:>6} {mean:>8} {s['zeros']:>6} {s['not_applicable']:>6}  {reasons}")
    if result.get("step_rewards"):
        lines.append(f"{'step reward':<28} {'steps':>6} {'mean':>8} {'zeros':>6} {'none':>6}  most common reasons "
                     f"(none: completions without a scored step)")
        for name, s in result["step_rewards"].items():
            mean = f"{s['mean']:.4f}" if s["mean"] is not None else "-"
            reasons = "; ".join(f"{r[:60]} ×{c}" for r, c in list(s["top_reasons"].items())[:3])
            lines.append(f"{name:<28} {s['steps']:>6} {mean:>8} {s['zeros']:>6} {s['no_steps']:>6}  {reasons}")
    return "\n".join(lines)
