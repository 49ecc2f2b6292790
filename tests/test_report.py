"""The run report is one self-contained page, with a plot for each thing the metrics hold."""

import json
import math
import random
import re

from thinkrl.evaluation.report import load_metrics, write_report

CONFIG = "model:\n  path: <embedded & co>\nnote: \"quoted\"\n"


def fake_run(run_dir, steps=40, eval_every=10, summary=True, config=True):
    """Synthetic metrics: noisy rewards, levels 1..4, eval only on some steps, gaps and NaN."""
    rng = random.Random(0)
    lines = []
    for s in range(steps + 1):
        row = {"step": s}
        if s:
            row.update({"reward": s / steps + rng.gauss(0, 0.2), "reward_std": 0.3,
                        "rewards/accuracy": s / steps / 2 + rng.gauss(0, 0.1), "rewards/format": 0.5,
                        "completion_len": 20 + s, "format_rate": min(1.0, s / steps + 0.2),
                        "kl": float("nan") if s == 3 else 0.001 * s, "clip_frac": 0.02,
                        "loss": 0.1, "grad_norm": 1.0, "lr": 1e-6, "zero_std_frac": 0.25,
                        "step_seconds": 0.3, "time": 0.3 * s})
            row.update({f"completion_len/level_{k}": 10 * k + s for k in range(1, 5) if (s + k) % 7})
            if s > 5:  # appears only later in the run
                row["reflection_rate"] = 0.1
            if s % 2:  # timing only on some lines
                row.update({"timing/generate": 0.2, "timing/update": 0.1})
        if s % eval_every == 0 or s == steps:
            row.update({"eval/accuracy": 0.2 + 0.4 * s / max(steps, 1), "eval/completion_len": 30 + s, "eval/format_rate": 0.8})
            row.update({f"eval/accuracy/level_{k}": 1 / k for k in range(1, 5)})
            row.update({f"eval/completion_len/level_{k}": 20 * k + s for k in range(1, 5)})
            row.update({"eval/reflection/wait": 0.1 + s / 100, "eval/reflection/check": 0.05})
        lines.append(json.dumps(row))  # json.dumps writes the NaN literal, as a careless writer would
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if summary:
        (run_dir / "summary.json").write_text(json.dumps({
            "accuracy_start": 0.2, "accuracy_end": 0.6, "steps": steps, "wall_seconds": 512.25,
            "format_rate_start": 0.8, "format_rate_end": 0.95, "interrupted": False, "resumed_from": None,
            "accuracy_by_level": {"level_1": [0.5, 1.0]}}))
    if config:
        (run_dir / "config.yaml").write_text(CONFIG)


def images(page):
    return page.count("data:image/png;base64,")


def assert_self_contained(page):
    head = page.split("<h2>Config</h2>")[0]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "http" not in head and "<script" not in page and "<link" not in page


def test_report_is_self_contained_with_each_plot(tmp_path):
    fake_run(tmp_path)
    out = write_report(tmp_path)
    assert out == tmp_path / "report.html" and out.exists()
    page = out.read_text()
    # reward, accuracy, length, format, kl/clip, reflection, timing; then the analyses: length
    # against difficulty, each reflective word
    assert images(page) == 9
    assert "Response length against difficulty" in page and "Reflective words across training" in page
    assert_self_contained(page)
    assert tmp_path.name in page.split("</h1>")[0]
    assert "0.2 → 0.6" in page and "8m 32s" in page and "40" in page and "0.8 → 0.95" in page
    assert "level_1: 0.5 → 1" in page
    assert "&lt;embedded &amp; co&gt;" in page and "<embedded" not in page
    assert "class=\"note\"" not in page


def test_plots_without_data_are_left_out(tmp_path):
    fake_run(tmp_path)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        for k in [k for k in r if k.startswith(("timing/", "reflection_rate", "kl", "clip_frac"))]:
            del r[k]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert images(write_report(tmp_path).read_text()) == 6


def test_killed_run_with_a_cut_line_and_no_summary(tmp_path):
    fake_run(tmp_path, steps=3, summary=False, config=False)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "reward": 0.')  # killed mid-write
    rows = load_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and math.isnan(rows[3]["kl"])
    page = write_report(tmp_path).read_text()
    assert "summary.json is missing" in page and "last step logged: 3" in page
    assert "config.yaml is missing" in page
    assert 1 <= images(page) <= 9
    assert_self_contained(page)


def test_report_of_an_empty_run_says_so(tmp_path):
    page = write_report(tmp_path).read_text()
    assert "metrics.jsonl is missing" in page and images(page) == 0
    (tmp_path / "metrics.jsonl").write_text("")
    page = write_report(tmp_path).read_text()
    assert "metrics.jsonl is empty" in page and images(page) == 0
    assert load_metrics(tmp_path) == []


def test_only_step_zero(tmp_path):
    fake_run(tmp_path, steps=0)
    page = write_report(tmp_path).read_text()
    assert "no training step yet" in page
    assert images(page) == 5  # held-out accuracy, length, format rate, length by level, reflective words: one evaluation each
