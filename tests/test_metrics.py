"""metrics.jsonl survives a run killed in the middle of writing a line."""

import json

from thinkrl.metrics import MetricsWriter, has_reflection, read_metrics


def test_half_written_line_is_skipped_and_dropped_on_resume(tmp_path):
    lines = [json.dumps({"step": s, "reward": s / 10}) for s in range(4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "rew')
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]
    w = MetricsWriter(tmp_path)
    w.truncate_after(2)
    w.write({"step": 3, "reward": 0.9})
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and rows[-1]["reward"] == 0.9
    assert all(json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines())


def test_non_finite_values_are_written_as_null(tmp_path):
    MetricsWriter(tmp_path).write({"step": 1, "loss": float("nan"), "kl": float("inf"), "reward": 1.0})
    assert read_metrics(tmp_path) == [{"step": 1, "loss": None, "kl": None, "reward": 1.0}]


def test_reflective_words_are_whole_words():
    assert has_reflection("4+8=12 wait carry 4+8+1=13")
    assert has_reflection("However, let me Check")
    assert not has_reflection("awaited checkpoint")
