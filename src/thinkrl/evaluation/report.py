"""The run report: RUN/report.html, one self-contained page (plots inlined as base64 PNG).

It shows the run's name; a summary table (held-out accuracy start -> end, steps, wall time,
then the rest of summary.json, `x_start`/`x_end` pairs on one row); notes on what is missing
(no metrics yet, only step 0, no summary because the run was stopped, no config); plots over
the steps: reward (total and each `rewards/*` component), held-out accuracy (overall and per
level), response length (training lines, held-out markers, overall and per level), format
rate, KL and clip fraction, reflective-word rate, and where a step's time goes (`timing/*`,
stacked); finally config.yaml verbatim. Plots without data are left out; noisy curves are
drawn faintly under a moving average. Non-finite values and unreadable lines (a run killed
mid-write) are skipped. Matplotlib draws on the Agg canvas: no display, no pyplot state.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path

from .analyze import plots as paper_plots
from ..metrics import read_metrics as load_metrics
from ..plots import render_png

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1320px;margin:24px auto;padding:0 16px;color:#222}
h1{font-size:22px;margin-bottom:12px} h2{font-size:17px;margin-top:28px} table{border-collapse:collapse;margin-bottom:12px}
th,td{border:1px solid #ddd;padding:4px 12px;text-align:left;font-size:14px} th{background:#f6f6f6;font-weight:600}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:10px}
.plots img{width:100%;border:1px solid #eee;border-radius:4px} .note{color:#8a1c1c;margin:4px 0}
pre{background:#f6f6f6;padding:12px;font-size:12px;overflow-x:auto;border-radius:4px}
"""
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
OVERALL = "#222222"


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series(rows, key):
    pts = [(r["step"], r[key]) for r in rows if _num(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _keys(rows, pattern) -> list[str]:
    """Keys of any row matching the regex, in natural order (level_2 before level_10)."""
    rx = re.compile(pattern)
    found = {k for r in rows for k in r if rx.fullmatch(k)}
    return sorted(found, key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)])


def _noisy(ys) -> bool:
    """Long and zig-zagging: the path goes up and down well over three times its range."""
    span = max(ys) - min(ys) if ys else 0
    return len(ys) >= 15 and span > 0 and sum(abs(b - a) for a, b in zip(ys, ys[1:])) > 3 * span


def _moving_average(ys):
    k = max(5, len(ys) // 15)
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y - (ys[i - k] if i >= k else 0.0)
        out.append(total / min(i + 1, k))
    return out


def _draw(ax, rows, key, label, color, kind="train") -> bool:
    """One series: a training line (faint + moving average when noisy) or held-out markers."""
    xs, ys = _series(rows, key)
    if not xs:
        return False
    if kind == "eval":
        ax.plot(xs, ys, "o--", color=color, label=label, markersize=4, linewidth=0.8)
    elif _noisy(ys):
        ax.plot(xs, ys, color=color, alpha=0.3, linewidth=0.8)
        ax.plot(xs, _moving_average(ys), color=color, label=label, linewidth=1.6)
    else:
        ax.plot(xs, ys, "-o" if len(xs) == 1 else "-", color=color, label=label, markersize=3, linewidth=1.4)
    return True


def _img(title, png: bytes | None) -> str:
    """An <img> with the PNG inlined, or '' for no plot."""
    if png is None:
        return ""
    return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _figure(title, ylabel, draw, unit=False) -> str:
    return _img(title, render_png(title, ylabel, draw, unit))


def _train_and_eval(rows, train_key, eval_key):
    def draw(ax):
        a = _draw(ax, rows, train_key, "training samples", PALETTE[0])
        return _draw(ax, rows, eval_key, "held-out", PALETTE[1], "eval") or a
    return draw


def _plots(rows) -> list[str]:
    def reward(ax):
        drawn = [_draw(ax, rows, "reward", "total", OVERALL)]
        comps = [k for k in _keys(rows, r"rewards/[^/]+(/[^/]+)?") if not k.endswith(("_std", "_errors"))]
        drawn += [_draw(ax, rows, k, k.split("/", 1)[1], PALETTE[i % 9]) for i, k in enumerate(comps)]
        return any(drawn)

    def accuracy(ax):
        drawn = [_draw(ax, rows, "eval/accuracy", "all levels", OVERALL, "eval")]
        levels = _keys(rows, r"eval/accuracy/level_[^/]+")
        drawn += [_draw(ax, rows, k, "level " + k.rsplit("_", 1)[-1], PALETTE[i % 9], "eval") for i, k in enumerate(levels)]
        return any(drawn)

    def length(ax):
        # one colour per level: the training line and the held-out markers share it
        groups = [("", "all levels", OVERALL)] + [
            ("/level_" + lv, "level " + lv, PALETTE[i % 9]) for i, lv in enumerate(
                dict.fromkeys(k.rsplit("_", 1)[-1] for k in _keys(rows, r"(eval/)?completion_len/level_[^/]+")))]
        drawn = False
        for suffix, label, color in groups:
            trained = _draw(ax, rows, "completion_len" + suffix, label, color)
            evaluated = _draw(ax, rows, "eval/completion_len" + suffix, None if trained else label + " (held-out)", color, "eval")
            drawn = drawn or trained or evaluated
        if drawn and any(_series(rows, k)[0] for k in _keys(rows, r"eval/completion_len(/.*)?")):
            ax.plot([], [], "o--", color="gray", markersize=4, linewidth=0.8, label="markers: held-out")
        return drawn

    def kl_clip(ax):
        kl = _draw(ax, rows, "kl", "KL to reference (left)", PALETTE[0])
        clip = False
        if _series(rows, "clip_frac")[0]:
            ax2 = ax.twinx()
            clip = _draw(ax2, rows, "clip_frac", "clip fraction (right)", PALETTE[3])
            ax2.set_ylabel("clip fraction")
            ax2.set_ylim(bottom=0)
        if kl and ax.dataLim.y0 >= 0:
            ax.set_ylim(bottom=0)
        return kl or clip

    def timing(ax, pattern=r"timing/.+"):
        keys = _keys(rows, pattern)
        steps = [r for r in rows if any(_num(r.get(k)) for k in keys)]
        if not steps:
            return False
        xs = [r["step"] for r in steps]
        stacks = [[r[k] if _num(r.get(k)) else 0.0 for r in steps] for k in keys]
        if len(xs) == 1:  # a stack needs a width to be seen
            xs, stacks = [xs[0] - 0.4, xs[0] + 0.4], [ys * 2 for ys in stacks]
        ax.stackplot(xs, stacks, labels=[k.split("/", 1)[1] for k in keys], alpha=0.8,
                     colors=[PALETTE[i % 9] for i in range(len(keys))])
        return True

    return [p for p in (
        _figure("Reward (training samples)", "mean reward", reward),
        _figure("Held-out accuracy", "accuracy", accuracy, unit=True),
        _figure("Response length", "tokens", length),
        _figure("Format rate", "share well-formed", _train_and_eval(rows, "format_rate", "eval/format_rate"), unit=True),
        _figure("KL to reference and clip fraction", "KL", kl_clip),
        _figure("Reflective words (wait, verify, ...)", "share of responses",
                _train_and_eval(rows, "reflection_rate", "eval/reflection_rate"), unit=True),
        _figure("Where a step's time goes", "seconds", timing),
        _figure("The update's parts (--profile)", "seconds", lambda ax: timing(ax, r"profile/.+")),
    ) if p] + [_img(title, png) for title, png in analysis_plots(rows)]


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return " → ".join(_fmt(x) for x in v)
    return str(v)


def _duration(s) -> str:
    if not _num(s):
        return _fmt(s)
    h, rest = divmod(int(round(s)), 3600)
    return (f"{h}h " if h else "") + f"{rest // 60}m {rest % 60:02d}s ({s:.1f} s)"


def _summary_rows(summary: dict) -> list[tuple[str, str]]:
    """(name, text) rows: accuracy, steps and wall time first; x_start/x_end pairs joined."""
    rest = dict(summary)
    out = []
    if "accuracy_start" in rest or "accuracy_end" in rest:
        out.append(("held-out accuracy", f"{_fmt(rest.pop('accuracy_start', None))} → {_fmt(rest.pop('accuracy_end', None))}"))
    if "steps" in rest:
        out.append(("steps", _fmt(rest.pop("steps"))))
    if "wall_seconds" in rest:
        out.append(("wall time", _duration(rest.pop("wall_seconds"))))
    for k in list(rest):
        if k.endswith("_start") and k[:-6] + "_end" in rest:
            out.append((k[:-6], f"{_fmt(rest.pop(k))} → {_fmt(rest.pop(k[:-6] + '_end'))}"))
    return out + [(k, _fmt(v)) for k, v in rest.items()]


def analysis_plots(rows):
    """Two of the paper's analyses (`thinkrl analyze`): length by difficulty, each reflective word."""
    return [(t, png) for t, png in paper_plots(rows) if t in ("Response length against difficulty",
                                                         "Reflective words across training")]


def write_report(run_dir) -> Path:
    """Write RUN/report.html from metrics.jsonl, summary.json and config.yaml; returns its path."""
    run_dir = Path(run_dir)
    rows = load_metrics(run_dir)
    notes = []
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        summary = summary if isinstance(summary, dict) else {}
    except (OSError, ValueError):
        summary = {}
        last = f" (last step logged: {rows[-1]['step']})" if rows else ""
        notes.append(f"summary.json is missing or unreadable: the run has not finished or was stopped{last}.")
    if not rows:
        state = "empty" if (run_dir / "metrics.jsonl").exists() else "missing"
        notes.append(f"metrics.jsonl is {state}: no step has been logged yet, so there is nothing to plot.")
    elif all(r["step"] == 0 for r in rows):
        notes.append("Only step 0 (before training) is logged: no training step yet.")
    config_path = run_dir / "config.yaml"
    config = config_path.read_text(errors="replace") if config_path.exists() else ""
    if not config:
        notes.append("config.yaml is missing.")

    plots = _plots(rows) if rows else []
    table = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(v)}</td></tr>" for k, v in _summary_rows(summary))
    name = html.escape(run_dir.resolve().name)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>thinkrl run {name}</title>
<style>{CSS}</style></head><body>
<h1>thinkrl run <code>{name}</code></h1>
{f"<table>{table}</table>" if table else ""}
{"".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)}
<div class="plots">{"".join(plots)}</div>
<h2>Config</h2>
<pre>{html.escape(config) if config else "(no config.yaml)"}</pre>
</body></html>
"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out
