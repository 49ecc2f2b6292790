"""`thinkrl score`: rewards applied offline to a file of completions, so that a user can check
a reward on real outputs before spending GPU hours on it.

Input: JSONL rows with `completion` (required), `prompt`, `answer` (math), `tests` (code: a
list of asserts, a HumanEval test with `entry_point`, or stdin/stdout cases), and any other
column a reward reads. Output: one JSONL row per input row, in order:

    {"line": 3, "rewards": {"accuracy": 0.0, "format": 1.0}, "reasons": {"accuracy": "5 is not 4"}}

`reasons` holds a reason for each zero or None (and for any other value its reward
explains). A line that is not a JSON object, or has no `completion`, gives
`{"line": N, "error": "..."}` instead, and is counted. A line that is not UTF-8 stops the
scoring with an error naming it (no output is written), as does an `--out` that is the input.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from ..data import DataError, decode_line
from ..rewards.combine import WeightedRewards

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
               timeout_s: float = 60.0) -> dict:
    """Scores every row of `data` with each named reward, writes `out` (atomically), and
    returns a summary: {reward: {n, mean, zeros, not_applicable, reasons: {reason: count}}},
    plus the counts of rows and of bad lines."""
    out = Path(out)
    if out.resolve() == Path(data).resolve() or (out.exists() and os.path.samefile(out, data)):
        raise ValueError(f"--out {out} is the input file {data}; write the scores to another file")
    scorer = WeightedRewards({name: 1.0 for name in rewards}, params, timeout_s=timeout_s)
    tmp = out.with_name(out.name + ".tmp")
    summary = {name: {"n": 0, "sum": 0.0, "zeros": 0, "not_applicable": 0, "reasons": Counter()} for name in rewards}
    n_rows = n_bad = 0
    pending: list[tuple[int, dict]] = []

    def flush(f):
        if not pending:
            return
        rows = [row for _, row in pending]
        completions = [row["completion"] for row in rows]
        columns = [{k: v for k, v in row.items() if k not in ("completion", "prompt")} for row in rows]
        per = scorer.scores(completions, columns, prompts=[row.get("prompt") for row in rows])
        for j, (n, _) in enumerate(pending):
            values = {name: per[name][j].value for name in rewards}
            reasons = {name: per[name][j].reason for name in rewards if per[name][j].reason}
            f.write(json.dumps({"line": n, "rewards": values, "reasons": reasons}, ensure_ascii=False) + "\n")
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
    return result


def format_summary(result: dict) -> str:
    lines = [f"{result['rows']} rows scored, {result['bad_lines']} bad lines",
             f"{'reward':<28} {'n':>6} {'mean':>8} {'zeros':>6} {'n/a':>6}  most common reasons"]
    for name, s in result["rewards"].items():
        mean = f"{s['mean']:.4f}" if s["mean"] is not None else "-"
        reasons = "; ".join(f"{r[:60]} ×{c}" for r, c in list(s["top_reasons"].items())[:3])
        lines.append(f"{name:<28} {s['n']:>6} {mean:>8} {s['zeros']:>6} {s['not_applicable']:>6}  {reasons}")
    return "\n".join(lines)
