"""A run directory belongs to one run: a second run never writes into it, nothing a run did
not write is deleted, a failed or impossible --resume changes nothing, checkpoints are never
lost to rotation, and a real full disk (a small tmpfs) stops a run cleanly."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_trainer import ROOT, random_model_overrides, small_dataset
from thinkrl import checkpoint
from thinkrl.cli import main
from thinkrl.rundir import MARKER, RunDirError, claim

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}


@pytest.fixture()
def train(tmp_path, qwen2_dir):
    (tmp_path / "none.yaml").write_text("{}\n")
    data = small_dataset(tmp_path)

    def run(out, *extra, **settings):
        args = random_model_overrides(qwen2_dir, data, **{"eval.every": 0, "data.eval_size": 4, **settings})
        return main(["train", "--config", str(tmp_path / "none.yaml"), "--out", str(out), *extra, *args])

    return run


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_rerun_into_a_run_directory_is_refused_and_changes_nothing(tmp_path, train, capsys):
    out = tmp_path / "D"
    assert train(out, **{"train.steps": 4, "train.save_every": 2}) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert train(out, **{"train.steps": 1}) == 2
    err = capsys.readouterr().err
    assert "already holds an earlier run" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(out) == before  # the old run's checkpoints, summary and metrics, untouched


def test_overwrite_replaces_a_run_and_only_a_run(tmp_path, train, capsys):
    out = tmp_path / "D"
    assert train(out, **{"train.steps": 4, "train.save_every": 2}) == 0
    assert train(out, "--overwrite", **{"train.steps": 1, "train.save_every": 1}) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["final_checkpoint"].endswith("step_000001")
    assert [c.name for c in checkpoint.list_checkpoints(out / "checkpoints")] == ["step_000001"]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    # a directory of someone else's files is never written to, and --overwrite never deletes them
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    for name in ("config.yaml", "summary.json", "notes.txt"):
        (theirs / name).write_text(f"mine: {name}\n")
    before = snapshot(theirs)
    capsys.readouterr()
    assert train(theirs, **{"train.steps": 1}) == 2
    assert "not a thinkrl run" in capsys.readouterr().err
    assert train(theirs, "--overwrite", **{"train.steps": 1}) == 2
    assert "never deletes what it did not write" in capsys.readouterr().err
    assert snapshot(theirs) == before


def test_a_running_run_locks_its_directory(tmp_path, train, capsys):
    out = tmp_path / "D"
    assert train(out, **{"train.steps": 2, "train.save_every": 2}) == 0
    with claim(out, resume=True):  # as a run in another process holds it
        capsys.readouterr()
        assert train(out, "--resume", **{"train.steps": 3}) == 2
        assert "in use by another run (pid" in capsys.readouterr().err
        with pytest.raises(RunDirError, match="in use"):
            claim(tmp_path / "D", overwrite=True)
    # the lock dies with its holder, however it ends: a process killed while holding it frees it
    code = f"from thinkrl.rundir import claim; import os; claim({str(out)!r}, resume=True); os._exit(9)"
    assert subprocess.run([sys.executable, "-c", code], env=ENV).returncode == 9
    assert train(out, "--resume", **{"train.steps": 3}) == 0


def test_default_run_names_are_unique_within_one_second(tmp_path):
    dirs = [claim(None, root=tmp_path / "runs") for _ in range(30)]
    assert len({d.path for d in dirs}) == 30 and all((d.path / MARKER).is_file() for d in dirs)
    # two processes started at the same moment get two directories
    code = "from thinkrl.rundir import claim; print(claim(None, root=%r).path)" % str(tmp_path / "runs2")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    names = {p.communicate()[0].strip() for p in procs}
    assert len(names) == 4


def test_out_that_is_a_file_is_refused_with_a_message(tmp_path, train, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert train(f) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert f.read_text() == "x"


# ---------------------------------------------------------------- resume never destroys history


def test_a_failed_resume_leaves_the_run_as_it_was(tmp_path, train, llama_dir, capsys):
    out = tmp_path / "D"
    assert train(out, **{"train.steps": 2, "train.save_every": 2}) == 0
    before = snapshot(out)
    capsys.readouterr()
    # another model's config: its weights do not fit the checkpoint
    rc = main(["train", "--resume", "--out", str(out), "--config", str(out / "config.yaml"),
               f"model.path={llama_dir}", "train.steps=3"])
    assert rc == 2
    assert "weights do not match the model" in capsys.readouterr().err
    assert snapshot(out) == before  # config.yaml included: a later --resume still works
    assert main(["train", "--resume", "--out", str(out), "train.steps=3"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


def test_resume_with_every_checkpoint_broken_refuses_and_keeps_the_metrics(tmp_path, train, capsys):
    out = tmp_path / "D"
    assert train(out, **{"train.steps": 4, "train.save_every": 2}) == 0
    for c in checkpoint.list_checkpoints(out / "checkpoints"):
        with open(c / "model.safetensors", "r+b") as f:  # same size, other bytes: only the checksum sees it
            f.write(b"\0" * 64)
    before = snapshot(out)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "train.steps=6"]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and "step_000002" in err and "step_000004" in err
    assert snapshot(out) == before


def test_a_manifest_that_does_not_list_the_checkpoint_is_not_a_checkpoint(tmp_path, train):
    out = tmp_path / "D"
    assert train(out, **{"train.steps": 2, "train.save_every": 2}) == 0
    good = checkpoint.list_checkpoints(out / "checkpoints")[0]
    assert checkpoint.verify(good)
    for name, edit in (("empty", lambda m: {**m, "files": {}}),
                       ("no_state", lambda m: {**m, "files": {k: v for k, v in m["files"].items()
                                                              if k != "trainer_state.pt"}})):
        bad = out / "checkpoints" / f"step_00000{3 if name == 'empty' else 4}"
        shutil.copytree(good, bad)
        manifest = json.loads((bad / checkpoint.MANIFEST).read_text())
        (bad / checkpoint.MANIFEST).write_text(json.dumps(edit(manifest)))
        assert not checkpoint.is_complete(bad) and not checkpoint.verify(bad), name
    assert checkpoint.latest_checkpoint(out / "checkpoints") == good


def test_rotation_keeps_the_checkpoint_just_written(tmp_path, qwen2_dir):
    from thinkrl.policy import load_model, load_tokenizer

    model, tok = load_model(str(qwen2_dir), "cpu"), load_tokenizer(str(qwen2_dir))
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        checkpoint.save_checkpoint(root, step, model, tok, {"step": step}, keep=2)
    # a resume from step 2 (step 4 judged broken) then saves step 3: the run's newest is step 3
    checkpoint.save_checkpoint(root, 3, model, tok, {"step": 3}, keep=2)
    assert [c.name for c in checkpoint.list_checkpoints(root)] == ["step_000002", "step_000003"]


# ---------------------------------------------------------------- a real full disk


def _in_small_tmpfs(mount: Path, size: str, command: list[str], show: str = "") -> subprocess.CompletedProcess:
    """Run `command` in a private mount namespace where `mount` is a fresh tmpfs of `size` (with
    ",ro": read-only); then print the file `show` (inside the namespace: the tmpfs is gone after)."""
    script = f'mount -t tmpfs -o size={size} tmpfs "{mount}" || exit 99; "$@"; rc=$?; cat "{show}" 2>/dev/null; exit $rc'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *command],
                          env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture()
def mount(tmp_path) -> Path:
    """An empty directory that `_in_small_tmpfs` can mount a tmpfs on; skips where the machine
    does not allow it (as root, file permissions alone cannot make a directory read-only or small)."""
    path = tmp_path / "mnt"
    path.mkdir()
    if shutil.which("unshare") is None or _in_small_tmpfs(path, "1m", ["true"]).returncode != 0:
        pytest.skip("this machine does not let the test mount a tmpfs in a private mount namespace "
                    "(needs unshare and CAP_SYS_ADMIN)")
    return path


def test_a_real_full_disk_stops_the_run_cleanly_or_is_carried_past(mount):
    # checkpoints every step, all kept: whatever a checkpoint weighs, the 20 MB fill up within 10 steps
    zero = [sys.executable, "-m", "thinkrl.cli", "zero", "--out", str(mount / "run"), "--steps", "10", "--no-progress",
            "train.save_every=1", "train.keep_checkpoints=100", "rollout.group_size=2", "train.prompts_per_step=2",
            "eval.every=0", "data.eval_size=4", "rollout.max_new_tokens=16", "eval.max_new_tokens=16"]
    res = _in_small_tmpfs(mount, "20m", zero, show=str(mount / "run" / "summary.json"))
    out = res.stdout[-3000:] + res.stderr[-3000:]
    assert res.returncode == 1, out
    assert "Traceback" not in res.stderr, out
    summary = json.loads(res.stdout[res.stdout.index("{\n"):])  # written on the full disk all the same
    k = summary["steps"]
    assert 2 <= k < 10 and summary["error"] and summary["final_checkpoint"].endswith(f"step_{k - 1:06d}"), out
    assert f"could not write the checkpoint of step {k}" in res.stderr and f"step_{k - 1:06d}" in res.stderr, out
    assert "--resume" in res.stderr, out
    res = _in_small_tmpfs(mount, "20m", zero + ["train.on_checkpoint_error=continue"],
                          show=str(mount / "run" / "summary.json"))
    out = res.stdout[-3000:] + res.stderr[-3000:]
    assert res.returncode == 0 and "continuing without it" in res.stderr and "Traceback" not in res.stderr, out
    assert json.loads(res.stdout[res.stdout.index("{\n"):])["steps"] == 10


def test_a_read_only_out_is_one_line_not_a_traceback(mount):
    res = _in_small_tmpfs(mount, "1m,ro", [sys.executable, "-m", "thinkrl.cli", "zero", "--out", str(mount / "run"),
                                           "--steps", "1", "--no-progress"])
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "cannot create the run directory" in res.stderr and "Read-only file system" in res.stderr


def test_a_final_model_save_that_fails_leaves_the_previous_one_whole(tmp_path, qwen2_dir, monkeypatch):
    """The final save of SFT, the reward model and on-policy distillation (policy.save_pretrained)
    is atomic: a save that dies half-way leaves the previous model as it was, and no debris."""
    from thinkrl.checkpoint import save_pretrained
    from thinkrl.policy import load_model, load_tokenizer

    model, tok = load_model(str(qwen2_dir), "cpu"), load_tokenizer(str(qwen2_dir))
    final = tmp_path / "final"
    save_pretrained(model, tok, final, extra={"info.json": "{}"})
    before = snapshot(final)
    assert "model.safetensors" in before and "info.json" in before

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(tok), "save_pretrained", disk_full)  # the weights are written, then this fails
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(model, tok, final)
    assert snapshot(final) == before and sorted(p.name for p in tmp_path.iterdir()) == ["final"]
