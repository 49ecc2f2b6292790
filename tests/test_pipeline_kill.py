"""A pipeline killed with SIGKILL at several moments, and resumed each time, ends as one run
straight through: the same table, the same evaluation metrics, the same weights of every model.

The kills follow files the pipeline writes (a metrics file, a checkpoint, a samples file), so
each lands where it is meant to whatever the machine's speed; the run straight through goes
on beside them in its own process."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from thinkrl.pipeline.table import table_differences

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
TIMEOUT = 300

SMALL = {
    "general": {"kind": "general", "settings": {"seed": 0}},
    "rm_helpful": {"kind": "rm", "settings": {"data": {"train": "synthetic:helpfulness", "synthetic_train": 400,
                                                       "synthetic_test": 40, "part": "summary"},
                                              "model": {"layers": 1}, "train": {"steps": 30, "batch_size": 4},
                                              "run": {"progress": False}}},
    "distill": {"kind": "distill", "settings": {"teacher": {"path": "embedded"}, "student": {"path": "embedded-student"},
                                                "data": {"prompts": "embedded", "max_prompts": 16},
                                                "sample": {"n": 2}, "filter": {"format": "format_lenient"},
                                                "eval": {"size": 8}, "run": {"progress": False},
                                                "sft": {"train": {"epochs": 2, "batch_size": 4, "micro_batch_size": 4,
                                                                  "save_every": 1}, "run": {"progress": False}}}},
    "eval_distill": {"kind": "eval", "settings": {"model": "${distill.model}", "samples": 2, "limit": 8,
                                                  "general": "${general.test}", "general_limit": 4,
                                                  "max_new_tokens": 60}},
    "report": {"kind": "report", "settings": {"rows": {"student distilled": "${eval_distill.metrics}"},
                                              "compute": {"student distilled": "${distill.dir}"}}},
}

# each run is killed once a file matching its pattern (under ROOT/stages) exists; each pattern
# matches from its moment until the stage is done (its .partial directory renamed), so a slow
# poll cannot miss it. Distillation's SFT here: 6 steps (12 kept samples, 2 epochs of 4).
KILLS = [
    "rm_helpful-*.partial/metrics.jsonl",  # reward-model training
    "distill-*.partial/sft/checkpoints/step_00000[1-5]",  # distillation's SFT, with a checkpoint to resume from
    "eval_distill-*.partial/reasoning/samples.jsonl*",  # an evaluation writing its samples
]


def start(config: Path, out: Path, log: Path) -> subprocess.Popen:
    with open(log, "a") as f:
        return subprocess.Popen([sys.executable, "-m", "thinkrl.cli", "pipeline", "--config", str(config),
                                 "--out", str(out)], env=ENV, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)


def kill_when(proc: subprocess.Popen, out: Path, pattern: str, log: Path) -> None:
    deadline = time.time() + TIMEOUT
    while not list((out / "stages").glob(pattern)):
        assert proc.poll() is None, f"the pipeline ended ({proc.returncode}) before {pattern}:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no {pattern} after {TIMEOUT} s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def outputs(out: Path) -> dict:
    """What the pipeline produced: its table, each evaluation's metrics (not the model's path,
    which names the root), a digest of each model's weights, each stage's record, its files,
    and the steps of each metrics file."""
    index = json.loads((out / "stages.json").read_text())
    records = {n: json.loads((Path(d) / "stage.json").read_text()) for n, d in index.items()}
    metrics = {n: {k: v for k, v in json.loads(Path(r["outputs"]["metrics"]).read_text()).items() if k != "model"}
               for n, r in records.items() if "metrics" in r["outputs"]}
    weights = {n: hashlib.sha256((Path(r["outputs"]["model"]) / "model.safetensors").read_bytes()).hexdigest()
               for n, r in records.items() if "model" in r["outputs"]}
    table = Path(records["report"]["outputs"]["table"]).read_text()
    files = {n: sorted(str(f.relative_to(d)) for f in Path(d).rglob("*") if f.is_file()) for n, d in index.items()}
    steps = {f"{n}/{f}": [json.loads(line)["step"] for line in (Path(index[n]) / f).read_text().splitlines()]
             for n, names in files.items() for f in names if f.endswith("metrics.jsonl")}
    return {"table": table, "metrics": metrics, "weights": weights, "records": records, "files": files,
            "steps": steps}


def test_killed_three_times_and_resumed_it_ends_as_a_run_straight_through(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({"stages": SMALL}, sort_keys=False))
    whole_log, killed_log = tmp_path / "whole.log", tmp_path / "killed.log"
    procs = [start(config, tmp_path / "whole", whole_log)]
    try:
        for pattern in KILLS:
            procs.append(start(config, tmp_path / "killed", killed_log))
            kill_when(procs[-1], tmp_path / "killed", pattern, killed_log)
        procs.append(start(config, tmp_path / "killed", killed_log))
        assert procs[-1].wait(TIMEOUT) == 0, killed_log.read_text()[-3000:]
        assert procs[0].wait(TIMEOUT) == 0, whole_log.read_text()[-3000:]
    finally:
        for proc in procs:  # none is left running when the test fails
            proc.kill()
            proc.wait()
    a, b = outputs(tmp_path / "whole"), outputs(tmp_path / "killed")
    assert table_differences(a["table"], b["table"]) == []
    assert "| student distilled |" in b["table"]
    assert b["metrics"] == a["metrics"]
    assert b["weights"] == a["weights"] and set(b["weights"]) == {"rm_helpful", "distill"}
    # each stage's directory holds the same files, and each metrics file one line per step, in order
    assert b["files"] == a["files"] and b["steps"] == a["steps"]
    assert not [p for p in (tmp_path / "killed" / "stages").iterdir() if p.suffix in (".partial", ".old")]
    # distillation continued from its checkpoint
    assert b["records"]["distill"]["resumed"] and not a["records"]["distill"]["resumed"]


def test_table_differences_name_the_cells_and_leave_timings_aside():
    table = ("# R1 pipeline\n\n| model | pass@1 | cons@8 |\n|---|---|---|\n| base | 31.0% | 19.3% |\n"
             "| R1 | 88.0% | 90.7% |\n\nCompute of the student comparison:\n\n- student: seconds 126.0, kept 1982\n")
    assert table_differences(table, table.replace("126.0", "131.5")) == []
    changed = table.replace("90.7%", "90.8%").replace("kept 1982", "kept 1981")
    assert table_differences(table, changed) == [
        {"row": "R1", "column": "cons@8", "a": "90.7%", "b": "90.8%"},
        {"row": "compute: student", "column": "kept", "a": "1982", "b": "1981"}]
    assert table_differences(table, table.replace("| R1 | 88.0% | 90.7% |\n", "")) == [
        {"row": "R1", "column": "cons@8", "a": "90.7%", "b": None}, {"row": "R1", "column": "pass@1", "a": "88.0%", "b": None}]
