"""The run report is one self-contained page, with plots for what the metrics hold."""

import json
import math

from thinkrl.report import write_report


def fake_run(tmp_path, steps=30):
    lines = []
    for s in range(steps + 1):
        row = {"step": s}
        if s:
            row.update({"reward": s / steps, "rewards/accuracy": s / steps / 2, "rewards/format": 0.5,
                        "completion_len": 20 + s, "completion_len/level_1": 10 + s, "completion_len/level_4": 40 + s,
                        "format_rate": 0.5, "kl": float("nan") if s == 3 else 0.01, "clip_frac": 0.0,
                        "reflection_rate": 0.1, "timing/generate": 0.2, "timing/update": 0.1})
        if s % 10 == 0:
            row.update({"eval/accuracy": 0.2 + s / 100, "eval/accuracy/level_1": 0.4, "eval/accuracy/level_4": 0.1,
                        "eval/completion_len": 30, "eval/format_rate": 0.8})
        lines.append(json.dumps(row).replace("NaN", "null") if s == 3 else json.dumps(row))
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "summary.json").write_text(json.dumps({"accuracy_start": 0.2, "accuracy_end": 0.5, "steps": steps}))
    (tmp_path / "config.yaml").write_text("model:\n  path: <embedded & co>\n")


def test_report_is_self_contained_with_each_plot(tmp_path):
    fake_run(tmp_path)
    page = write_report(tmp_path).read_text()
    # reward, accuracy, train length, eval length, format, reflection, kl/clip, timing
    assert page.count("data:image/png;base64,") == 8
    assert "http" not in page.split("<h2>Config</h2>")[0].replace("<!doctype html>", "")
    assert "accuracy_end" in page and "0.5" in page
    assert "&lt;embedded &amp; co&gt;" in page


def test_report_of_an_empty_run_says_so(tmp_path):
    page = write_report(tmp_path).read_text()
    assert "no step yet" in page and "data:image/png" not in page
