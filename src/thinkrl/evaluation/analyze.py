"""`thinkrl analyze RUN_DIR`: the DeepSeek-R1 paper's analyses of a training run
(docs/R1-PIPELINE.md §R1-Zero, docs/EVALUATION.md §The paper's analyses).

From the held-out evaluations in RUN/metrics.jsonl (taken every `eval.every` steps, and at the
start and the end: the checkpoints in time of the run):

- response length against difficulty (mean held-out length per level, one line per
  evaluation): "adaptive thinking time", longer answers for harder questions;
- response length across training, per level (held-out markers, training samples as lines);
- the frequency of each reflective word (wait, mistake, however, but, retry, error, verify,
  wrong, evaluate, check: occurrences per response) across training, and its growth from the
  first evaluation to the last: the "aha moment";
- accuracy by difficulty across training.

Writes RUN/analysis/*.png and RUN/analysis/analysis.json (the numbers behind the plots); the
same plots appear in the run report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..metrics import REFLECTION_WORDS, read_metrics
from ..plots import render_png

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _levels(rows, prefix: str) -> list[str]:
    rx = re.compile(re.escape(prefix) + r"/level_(.+)")
    found = {m.group(1) for r in rows for k in r if (m := rx.fullmatch(k))}
    return sorted(found, key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])


def tables(rows: list[dict]) -> dict:
    """The numbers: per evaluation step, accuracy and length per level and each reflective
    word's rate; and each word's growth (last / first evaluation)."""
    evals = [r for r in rows if _num(r.get("eval/accuracy"))]
    levels = _levels(evals, "eval/completion_len") or _levels(evals, "eval/accuracy")
    out: dict = {"eval_steps": [r["step"] for r in evals], "levels": levels, "by_step": {}}
    for r in evals:
        out["by_step"][str(r["step"])] = {
            "accuracy": r.get("eval/accuracy"),
            "completion_len": r.get("eval/completion_len"),
            "reflection_rate": r.get("eval/reflection_rate"),
            "accuracy_by_level": {lv: r.get(f"eval/accuracy/level_{lv}") for lv in levels},
            "length_by_level": {lv: r.get(f"eval/completion_len/level_{lv}") for lv in levels},
            "reflection": {w: r.get(f"eval/reflection/{w}") for w in REFLECTION_WORDS
                           if _num(r.get(f"eval/reflection/{w}"))},
        }
    if len(evals) >= 2:
        first, last = out["by_step"][str(evals[0]["step"])], out["by_step"][str(evals[-1]["step"])]
        growth = {}
        for w in REFLECTION_WORDS:
            a, b = first["reflection"].get(w), last["reflection"].get(w)
            if _num(a) and _num(b) and (a or b):
                growth[w] = {"first": a, "last": b, "ratio": (b / a) if a else None}
        out["reflection_growth"] = growth
    return out


def plots(rows: list[dict]) -> list[tuple[str, bytes]]:
    """(title, PNG) for each analysis that has data."""
    t = tables(rows)
    steps, levels, by = t["eval_steps"], t["levels"], t["by_step"]
    n = max(1, len(steps) - 1)

    def shade(i):  # early evaluations light, late ones dark
        return (0.75 - 0.65 * i / n, 0.8 - 0.5 * i / n, 0.95 - 0.3 * i / n)

    def length_vs_level(ax):
        drawn = False
        for i, s in enumerate(steps):
            pts = [(j, by[str(s)]["length_by_level"][lv]) for j, lv in enumerate(levels)
                   if _num(by[str(s)]["length_by_level"][lv])]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color=shade(i), label=f"step {s}", markersize=4)
                drawn = True
        ax.set_xticks(range(len(levels)), levels)
        return drawn

    def over_steps(ax, table: str, lv: str, j: int, style: str, label: str, **kw) -> bool:
        """One level's held-out values of `table` across the evaluations."""
        xs = [s for s in steps if _num(by[str(s)][table][lv])]
        if xs:
            ax.plot(xs, [by[str(s)][table][lv] for s in xs], style, color=PALETTE[j % 10], label=label, markersize=4, **kw)
        return bool(xs)

    def length_over_training(ax):
        drawn = False
        for j, lv in enumerate(levels):
            drawn = over_steps(ax, "length_by_level", lv, j, "o--", f"level {lv} (held-out)", linewidth=0.8) or drawn
            train = [(r["step"], r[f"completion_len/level_{lv}"]) for r in rows if _num(r.get(f"completion_len/level_{lv}"))]
            if train:
                ax.plot([p[0] for p in train], [p[1] for p in train], color=PALETTE[j % 10], alpha=0.35, linewidth=0.8)
        if not levels:
            xs = [s for s in steps if _num(by[str(s)]["completion_len"])]
            if xs:
                ax.plot(xs, [by[str(s)]["completion_len"] for s in xs], "o--", color="#222", label="held-out")
                drawn = True
        return drawn

    def reflection(ax):
        drawn = False
        for j, w in enumerate(REFLECTION_WORDS):
            xs = [s for s in steps if w in by[str(s)]["reflection"]]
            ys = [by[str(s)]["reflection"][w] for s in xs]
            if xs and any(ys):
                ax.plot(xs, ys, "-o", color=PALETTE[j % 10], label=w, markersize=3)
                drawn = True
        return drawn

    def accuracy_by_level(ax):
        drawn = False
        for j, lv in enumerate(levels):
            drawn = over_steps(ax, "accuracy_by_level", lv, j, "-o", f"level {lv}") or drawn
        xs = [s for s in steps if _num(by[str(s)]["accuracy"])]
        if xs:
            ax.plot(xs, [by[str(s)]["accuracy"] for s in xs], "--", color="#222", label="all", linewidth=1.2)
            drawn = True
        return drawn

    figs = [("Response length against difficulty", render_png("Response length against difficulty", "mean tokens (held-out)",
                                                               length_vs_level, xlabel="level")),
            ("Response length across training", render_png("Response length across training", "mean tokens",
                                                            length_over_training)),
            ("Reflective words across training", render_png("Reflective words across training",
                                                             "occurrences per response (held-out)", reflection)),
            ("Accuracy by difficulty across training", render_png("Accuracy by difficulty across training",
                                                                  "pass@1 (held-out)", accuracy_by_level, unit=True))]
    return [(title, png) for title, png in figs if png is not None]


FILES = {"Response length against difficulty": "length_vs_difficulty.png",
         "Response length across training": "length_over_training.png",
         "Reflective words across training": "reflective_words.png",
         "Accuracy by difficulty across training": "accuracy_by_level.png"}


def analyze_run(run_dir: str | Path) -> dict:
    """Write RUN/analysis/ (PNG plots + analysis.json); return the tables with the plot files."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out_dir = run_dir / "analysis"
    out_dir.mkdir(exist_ok=True)
    result = tables(rows)
    result["plots"] = []
    for title, png in plots(rows):
        (out_dir / FILES[title]).write_bytes(png)
        result["plots"].append(FILES[title])
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=1))
    return result


def format_analysis(result: dict) -> str:
    """A text table: one row per evaluation step."""
    levels = result["levels"]
    head = f"{'step':>6} {'acc':>6} " + " ".join(f"{'len L' + lv:>8}" for lv in levels) + f" {'reflect':>8}"
    lines = [head]
    for s in result["eval_steps"]:
        b = result["by_step"][str(s)]
        f = lambda v, w=8, p=1: f"{v:>{w}.{p}f}" if _num(v) else f"{'-':>{w}}"  # noqa: E731
        lines.append(f"{s:>6} {f(b['accuracy'], 6, 3)} " + " ".join(f(b["length_by_level"][lv]) for lv in levels)
                     + f" {f(b['reflection_rate'], 8, 3)}")
    growth = result.get("reflection_growth") or {}
    if growth:
        lines.append("reflective words per response, first -> last evaluation: " + ", ".join(
            f"{w} {g['first']:.2f}->{g['last']:.2f}" for w, g in growth.items()))
    if not result["eval_steps"]:
        lines.append("no held-out evaluation in this run's metrics (eval.every, data.eval)")
    lines.append("plots: " + ", ".join(result["plots"]) if result["plots"] else "no plots (no data)")
    return "\n".join(lines)
