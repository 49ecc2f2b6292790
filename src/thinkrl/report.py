"""The run report: RUN/report.html, one self-contained page (plots inlined as PNG).

It shows the summary table, then, over the steps: reward (total and each component),
held-out accuracy (overall and per difficulty level), response length (overall and per
level), format rate, reflective-word rate, KL and clip fraction, and where the time of a
step goes; finally the resolved config. Plots without data are left out.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path

from .metrics import read_metrics

load_metrics = read_metrics


def _series(rows, key):
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _keys(rows, pattern):
    rx = re.compile(pattern)
    found = {k for r in rows for k in r if rx.fullmatch(k)}
    return sorted(found, key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)])


def _smooth(ys, k=9):
    out, acc = [], []
    for y in ys:
        acc.append(y)
        acc = acc[-k:]
        out.append(sum(acc) / len(acc))
    return out


def _figure(title, ylabel, lines, rows):
    """lines: [(key, label, style)]; returns an <img> tag or '' when no line has data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [(label, style, *_series(rows, key)) for key, label, style in lines]
    data = [d for d in data if d[2]]
    if not data:
        return ""
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    for label, style, xs, ys in data:
        if style == "smooth" and len(ys) > 15:
            ax.plot(xs, ys, alpha=0.25, linewidth=0.8)
            ax.plot(xs, _smooth(ys), label=label, color=ax.lines[-1].get_color())
        else:
            ax.plot(xs, ys, "o-" if style == "marker" else "-", label=label, markersize=3)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(data) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _level_label(key):
    return "level " + key.rsplit("_", 1)[-1]


def write_report(run_dir) -> Path:
    run_dir = Path(run_dir)
    rows = load_metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""

    plots = [
        _figure("Reward", "mean reward", [("reward", "total", "smooth")]
                + [(k, k.split("/", 1)[1], "smooth") for k in _keys(rows, r"rewards/[^/]+") if not k.endswith("_std")], rows),
        _figure("Held-out accuracy", "accuracy", [("eval/accuracy", "all", "marker")]
                + [(k, _level_label(k), "marker") for k in _keys(rows, r"eval/accuracy/level_\w+")], rows),
        _figure("Response length (training samples)", "tokens", [("completion_len", "all", "smooth")]
                + [(k, _level_label(k), "smooth") for k in _keys(rows, r"completion_len/level_\w+")], rows),
        _figure("Response length (held-out)", "tokens", [("eval/completion_len", "all", "marker")]
                + [(k, _level_label(k), "marker") for k in _keys(rows, r"eval/completion_len/level_\w+")], rows),
        _figure("Format rate", "share well-formed", [("format_rate", "training samples", "smooth"),
                                                      ("eval/format_rate", "held-out", "marker")], rows),
        _figure("Reflective words", "share of responses", [("reflection_rate", "training samples", "smooth"),
                                                            ("eval/reflection_rate", "held-out", "marker")], rows),
        _figure("KL to reference and clip fraction", "value", [("kl", "KL (k3)", "line"), ("clip_frac", "clip fraction", "line")], rows),
        _figure("Where a step's time goes", "seconds", [(k, k.split("/", 1)[1], "line") for k in _keys(rows, r"timing/\w+")], rows),
    ]
    plots = [p for p in plots if p]
    summary_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in summary.items())
    missing = "" if rows else "<p class=warn>metrics.jsonl is missing or empty: the run wrote no step yet.</p>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>thinkrl run {html.escape(run_dir.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1360px;margin:24px auto;color:#222}}
table{{border-collapse:collapse;margin-bottom:16px}}th,td{{border:1px solid #ddd;padding:3px 10px;text-align:left;font-size:14px}}
.plots{{display:flex;flex-wrap:wrap;gap:8px}}img{{border:1px solid #eee}}pre{{background:#f6f6f6;padding:10px;font-size:12px}}
.warn{{color:#a00}}</style></head><body>
<h1>thinkrl run {html.escape(run_dir.name)}</h1>
<table>{summary_rows}</table>{missing}
<div class="plots">{''.join(plots)}</div>
<h2>Config</h2><pre>{html.escape(config)}</pre>
</body></html>
"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return " → ".join(_fmt(x) for x in v)
    return str(v)
