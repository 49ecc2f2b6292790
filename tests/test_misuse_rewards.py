"""Misuse of rewards (review issue 14, findings 6-8): a user's reward module that hangs, exits
or raises at import, a reward that hangs with isolation off, a trainer killed while a reward
hangs, and reward settings that are misspelt or impossible. Each ends with a message and an
exit code, in bounded time, and leaves no process behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thinkrl.cli import main
from thinkrl.config import ConfigError, load_config
from thinkrl.rewards.combine import WeightedRewards

ROOT = Path(__file__).resolve().parents[1]


def env_with(path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), str(path)])}


def user_module(tmp_path: Path, name: str, body: str) -> Path:
    (tmp_path / f"{name}.py").write_text(body + "\n\ndef reward(completions, **kwargs):\n"
                                         "    return [1.0] * len(completions)\n")
    data = tmp_path / "data.jsonl"
    data.write_text('{"completion": "<think> a </think> <answer> 1 </answer>", "answer": "1"}\n')
    return data


def thinkrl(args: list[str], tmp_path: Path, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "thinkrl.cli", *args], cwd=tmp_path, env=env_with(tmp_path),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"thinkrl {' '.join(args)} did not end within {timeout} s")


TINY = ["--steps", "1", "rollout.group_size=2", "train.prompts_per_step=2", "data.eval_size=4", "run.progress=false"]


@pytest.mark.parametrize("command", ["score", "zero"])
def test_a_reward_module_that_blocks_at_import_is_refused_within_the_time_limit(tmp_path, command):
    data = user_module(tmp_path, "sleepy", "import time\ntime.sleep(600)")
    if command == "score":
        args = ["score", "--rewards", "sleepy:reward", "--data", str(data), "--out", "o.jsonl", "--timeout", "2"]
    else:
        args = ["zero", "--out", str(tmp_path / "run"), *TINY, "rewards.weights={sleepy:reward: 1.0}",
                "rewards.timeout_s=2"]
    t0 = time.monotonic()
    r = thinkrl(args, tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "sleepy" in r.stderr and "took longer than 2 s" in r.stderr
    assert "Traceback" not in r.stderr
    # bounded by the 2 s limit plus start-up (torch, the model), not by the module's 600 s sleep;
    # the margin is wide because start-up on a loaded 2-core machine has taken over 60 s
    assert time.monotonic() - t0 < 200


@pytest.mark.parametrize("exit_call", ["import os\nos._exit(0)", "import sys\nsys.exit(0)"])
def test_a_reward_module_that_exits_at_import_fails_saying_so(tmp_path, exit_call):
    data = user_module(tmp_path, "quitter", exit_call)
    r = thinkrl(["score", "--rewards", "quitter:reward", "--data", str(data), "--out", "o.jsonl"], tmp_path, 60)
    assert r.returncode != 0
    assert "reward module 'quitter'" in r.stderr and "exited during import" in r.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("command", ["score", "zero"])
def test_a_reward_module_whose_import_raises_is_one_line_and_code_2(tmp_path, monkeypatch, capsys, command):
    data = user_module(tmp_path, "raiser_at_import", "raise RuntimeError('no licence key found')")
    monkeypatch.syspath_prepend(str(tmp_path))
    if command == "score":
        args = ["score", "--rewards", "raiser_at_import:reward", "--data", str(data), "--out", str(tmp_path / "o")]
    else:
        args = ["zero", "--out", str(tmp_path / "run"), *TINY, "rewards.weights={raiser_at_import:reward: 1.0}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("thinkrl") and len(err.splitlines()) == 1
    assert "RuntimeError: no licence key found" in err


HANG = """
import sys, time
from thinkrl.rewards.combine import WeightedRewards
rewards = WeightedRewards({"hang:reward": 1.0}, timeout_s=float(sys.argv[1]), isolate=sys.argv[2] == "1")
print("calling", flush=True)
total, per = rewards(["x"], [{}])
print("done", total, flush=True)
"""


def test_a_hanging_reward_in_a_thread_does_not_keep_the_process_alive(tmp_path):
    (tmp_path / "hang.py").write_text("import time\n\ndef reward(completions, **kwargs):\n    time.sleep(600)\n")
    try:
        r = subprocess.run([sys.executable, "-c", HANG, "0.5", "0"], cwd=tmp_path, env=env_with(tmp_path),
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the process did not exit after the reward timed out; stdout {e.stdout!r}")
    assert r.returncode == 0 and "done [0.0]" in r.stdout, r.stderr[-2000:]


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_reward_workers_die_with_a_trainer_killed_by_sigkill(tmp_path):
    marker = tmp_path / "started"
    (tmp_path / "hang.py").write_text(f"import time\n\ndef reward(completions, **kwargs):\n"
                                      f"    open({str(marker)!r}, 'w').close()\n    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", HANG, "300", "1"], cwd=tmp_path, env=env_with(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers = []
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), "the reward never started in its worker"
        workers = children(parent.pid)
        assert workers
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(w) for w in workers), "a reward worker outlived its killed parent"
    finally:
        parent.kill()
        for w in workers:
            try:
                os.kill(w, signal.SIGKILL)
            except OSError:
                pass


def test_misspelt_reward_param_is_refused_at_start(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"accuracy\.sourse is not a setting.*did you mean 'source'.*max_chars"):
        load_config(None, ["rewards.params.accuracy.sourse=boxed"])
    data = user_module(tmp_path, "unused", "")
    assert main(["score", "--rewards", "accuracy", "--param", "accuracy.sourse=boxed", "--data", str(data),
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "sourse" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("setting, message", [
    ("rewards.params.accuracy.source=nonsense", "unknown answer source 'nonsense'"),
    ("rewards.params.format.strict=true", "format.strict is not a setting"),  # a reward with no settings at all
])
def test_impossible_reward_settings_fail_at_start(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [setting])


def test_a_user_reward_is_held_to_its_signature_unless_it_takes_keywords(tmp_path, monkeypatch):
    (tmp_path / "strict_reward.py").write_text("def reward(completions, threshold=0.5, **kwargs):\n"
                                               "    return [threshold] * len(completions)\n\n"
                                               "def fixed(completions, prompts=None, answer=None):\n"
                                               "    return [1.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert WeightedRewards({"strict_reward:reward": 1.0}, {"strict_reward:reward": {"threshold": 0.25}})(
        ["x"], [{}])[0] == [0.25]
    with pytest.raises(ValueError, match="thresold is not a setting"):
        WeightedRewards({"strict_reward:fixed": 1.0}, {"strict_reward:fixed": {"thresold": 0.25}})
