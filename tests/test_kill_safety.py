"""Files a killed run reads again on resume are written whole or not at all: the filter counts
that mark distillation's teacher samples complete, and metrics.jsonl when a resume cuts it
back to the checkpoint's step. (The pipeline's own kill-and-resume test: test_pipeline_kill.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from thinkrl.distill.run import load_distill_config, run_distill


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, given back


def test_distill_resumes_past_a_filter_file_cut_short_by_a_kill(tmp_path):
    cfg = load_distill_config(None, [
        "teacher.path=embedded", "student.path=embedded-student", "data.prompts=embedded", "data.max_prompts=8",
        "sample.n=2", "sample.max_new_tokens=48", "eval.size=0", "filter.correct=false", "filter.format=none",
        "sft.train.epochs=1", "sft.train.batch_size=8", "sft.train.micro_batch_size=8", "sft.train.save_every=1",
        "run.progress=false"])
    out = tmp_path / "run"
    out.mkdir()
    first = run_distill(cfg, out)
    rows = (out / "distill.jsonl").read_text()
    text = (out / "filter.json").read_text()
    (out / "filter.json").write_text(text[: len(text) // 2])  # what a kill during a plain write leaves
    again = run_distill(cfg, out, resume=True)  # before: json.JSONDecodeError on every resume
    assert json.loads((out / "filter.json").read_text())["kept"] == first["kept"] == again["kept"]
    assert (out / "distill.jsonl").read_text() == rows  # sampled again, to the same seeded samples


def test_cutting_metrics_back_on_resume_never_loses_the_file(tmp_path):
    """A write that fails half-way (here the file-size limit, as a full disk would) leaves the
    old metrics.jsonl whole; the old code had emptied it before writing."""
    from thinkrl.metrics import MetricsWriter

    w = MetricsWriter(tmp_path)
    for step in range(60):
        w.write({"step": step, "loss": 0.5, "note": "x" * 40})
    w.close()
    before = (tmp_path / "metrics.jsonl").read_text()
    code = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        from thinkrl.metrics import MetricsWriter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        w = MetricsWriter(Path({str(tmp_path)!r}))
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
        try:
            w.truncate_after(40)
        except OSError as e:
            print("failed:", e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "failed:" in r.stdout, r.stdout + r.stderr  # the limit did bite
    assert (tmp_path / "metrics.jsonl").read_text() == before
