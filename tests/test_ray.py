"""Ray rollout workers (rollout.engine=ray) and Ray reward workers (rewards.workers=ray), on a
local Ray cluster of 2 CPUs started once for the module.

References are independent of the code under test: the rollouts are HFEngine's in this process
on the same chunks of questions with the seeds drawn the documented way, and the scores are
WeightedRewards' local path."""

from __future__ import annotations

import copy
import importlib.util
import logging
import sys
import time

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'thinkrl[ray]'); the Ray workers "
                                        "cannot be tested")

from thinkrl.config import ConfigError, load_config  # noqa: E402
from thinkrl.policy import load_model, load_tokenizer, resolve_model_path  # noqa: E402
from thinkrl.ray_cluster import wait_dead  # noqa: E402
from thinkrl.rewards.combine import WeightedRewards  # noqa: E402
from thinkrl.rollout import SamplingParams, make_engine  # noqa: E402

PATH = resolve_model_path("embedded")
PARAMS = SamplingParams(n=4, temperature=1.0, max_new_tokens=24)
CHUNKS = [(0, 3), (3, 5)]  # 5 questions over 2 workers: whole groups, contiguous, larger first


@pytest.fixture(scope="module")
def lm():
    return load_model(PATH, torch.device("cpu")), load_tokenizer(PATH)


@pytest.fixture(scope="module")
def prompts(lm):
    tok = lm[1]
    return [tok(f"{a}+{b}=")["input_ids"] for a, b in [(12, 7), (5, 38), (61, 20), (9, 9), (44, 3)]]


@pytest.fixture(scope="module")
def engine(ray_cluster, lm):
    model, tok = lm
    eng = make_engine("ray", model, tok, "cpu", workers=2, ray_address="", ray_num_cpus=2, model_path=PATH,
                      dtype="auto")
    yield eng
    eng.close()


def reference(model, tok, prompts, params, seed, chunks=CHUNKS):
    """HFEngine in this process (one torch thread, as each worker) on each chunk with its seed:
    seeds drawn from the caller's generator, one per chunk in chunk order."""
    g = torch.Generator().manual_seed(seed)
    seeds = [int(torch.randint(2**62, (1,), generator=g)) for _ in chunks]
    local = make_engine("hf", model, tok, "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts = [local.generate(prompts[s:e], params, torch.Generator().manual_seed(sd))
                 for (s, e), sd in zip(chunks, seeds)]
    finally:
        torch.set_num_threads(threads)
    out = {"ids": [], "lp": [], "texts": [], "groups": [], "finish": []}
    for (s, _), p in zip(chunks, parts):
        out["ids"] += p.completion_ids
        out["lp"] += p.logprobs
        out["texts"] += p.texts
        out["groups"] += [s + g for g in p.group_ids]
        out["finish"] += p.finish_reasons
    return out


def as_dict(r):
    return {"ids": r.completion_ids, "lp": r.logprobs, "texts": r.texts, "groups": r.group_ids,
            "finish": r.finish_reasons}


def test_ray_workers_sample_what_the_local_engine_samples(engine, lm, prompts):
    model, tok = lm
    t0 = time.perf_counter()
    got = engine.generate(prompts, PARAMS, generator=torch.Generator().manual_seed(0))
    print(f"ray generate of {len(prompts) * PARAMS.n}: {time.perf_counter() - t0:.2f} s")
    want = reference(model, tok, prompts, PARAMS, 0)
    assert as_dict(got) == want  # ids, log-probs (bitwise), texts, group ids, finish reasons
    assert got.prompt_ids == [prompts[i] for i in want["groups"]]
    assert got.group_ids == [i // PARAMS.n for i in range(len(prompts) * PARAMS.n)]
    assert engine.pad_id == make_engine("hf", model, tok, "cpu").pad_id
    # the caller's generator decides, not timing: another seed gives other samples, the same seed the same
    assert as_dict(engine.generate(prompts, PARAMS, generator=torch.Generator().manual_seed(1)))["ids"] != want["ids"]
    again = engine.wait(engine.submit(prompts, PARAMS, generator=torch.Generator().manual_seed(0)))
    assert as_dict(again) == want


def test_fewer_questions_than_workers(engine, lm, prompts):
    got = engine.generate(prompts[:1], PARAMS, generator=torch.Generator().manual_seed(3))
    assert as_dict(got) == reference(*lm, prompts[:1], PARAMS, 3, chunks=[(0, 1)])


def test_a_killed_worker_is_replaced_and_the_call_gives_the_same_samples(engine, lm, prompts, caplog):
    want = reference(*lm, prompts, PARAMS, 5)
    old = engine.actors[1]
    ray.kill(old)  # between calls
    assert wait_dead(old)
    with caplog.at_level(logging.WARNING, logger="thinkrl.rollout"):
        got = engine.generate(prompts, PARAMS, generator=torch.Generator().manual_seed(5))
    assert as_dict(got) == want
    assert engine.actors[1] is not old
    assert "Ray rollout worker 1 died" in caplog.text


def test_sync_weights_and_a_kill_during_a_call(engine, lm, prompts):
    """Asynchronous use: a call submitted under the old weights, then new weights synced, then
    its worker killed while it samples. The call still gives the old weights' samples (the new
    actor is given the weights the call was submitted under), and the next call the new ones."""
    model, tok = lm
    changed = copy.deepcopy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in changed.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    params = SamplingParams(n=8, temperature=1.0, max_new_tokens=48)
    want_old = reference(model, tok, prompts, params, 7)
    want_new = reference(changed, tok, prompts, params, 7)
    assert want_new["ids"] != want_old["ids"]  # the change is one the samples show
    pending = engine.submit(prompts, params, generator=torch.Generator().manual_seed(7))
    engine.sync_weights(changed)
    old = engine.actors[0]
    ray.kill(old)  # while it samples its chunk (or before it starts it)
    assert as_dict(engine.wait(pending)) == want_old
    assert engine.actors[0] is not old
    assert as_dict(engine.generate(prompts, params, generator=torch.Generator().manual_seed(7))) == want_new
    engine.sync_weights(model)
    assert as_dict(engine.generate(prompts, PARAMS, generator=torch.Generator().manual_seed(0))) == \
        reference(model, tok, prompts, PARAMS, 0)


# ---------------------------------------------------------------- rewards

CODE_ROW = {"answer": "", "tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}
COMPLETIONS = [
    ("<think>12+7</think><answer>19</answer>", {"answer": "19"}),
    ("<think>5+38</think><answer>42</answer>", {"answer": "43"}),
    ("no tags, 81", {"answer": "81"}),
    ("<think>easy</think><answer>\\frac{1}{2}</answer>", {"answer": "0.5"}),
    ("<think>code</think>```python\ndef add(a, b):\n    return a + b\n```", CODE_ROW),
    ("<think>code</think>```python\ndef add(a, b):\n    return a - b\n```", CODE_ROW),
    ("<think>code</think>```python\nwhile True:\n    pass\n```", CODE_ROW),
]


def test_ray_reward_workers_score_as_the_local_path(ray_cluster, tmp_path, monkeypatch):
    (tmp_path / "ray_hang_reward.py").write_text("import time\n\n\ndef reward(completions, **kwargs):\n"
                                                 "    time.sleep(600)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = {"accuracy": 1.0, "format": 0.5, "code": 1.0, "ray_hang_reward:reward": 1.0}
    params = {"code": {"timeout_s": 1.0}}
    completions, rows = [c for c, _ in COMPLETIONS], [r for _, r in COMPLETIONS]
    scores = {}
    for workers in ("local", "ray"):
        ws = WeightedRewards(weights, params, timeout_s=2.0, workers=workers, ray_actors=2)
        t0 = time.perf_counter()
        scores[workers] = ws.scores(completions, rows, prompts=["q"] * len(rows))
        print(f"rewards.workers={workers}: {time.perf_counter() - t0:.1f} s")
        assert ws.errors == {"accuracy": 0, "format": 0, "code": 0, "ray_hang_reward:reward": 1}
    assert scores["ray"] == scores["local"]  # values and reasons
    local = scores["local"]
    assert [s.value for s in local["accuracy"][:4]] == [1.0, 0.0, 0.0, 1.0]
    assert [s.value for s in local["code"][4:]] == [1.0, 0.0, 0.0]  # run in the sandbox, the loop timed out
    hang = {s.reason for s in local["ray_hang_reward:reward"]}
    assert len(hang) == 1 and hang.pop().startswith("reward failed: ")


def test_a_reward_worker_stuck_holding_the_gil_is_killed_and_replaced(ray_cluster, tmp_path, monkeypatch, caplog):
    """isolate=false runs a user's reward in a thread of the reward actor; one that never lets go
    of the GIL stops its limit too. The actor gives no answer within timeout_s + GRACE_S: it is
    killed and replaced, the batch scores on_error, and the next batch is scored."""
    from thinkrl.rewards import ray_workers

    (tmp_path / "ray_gil_reward.py").write_text(
        "import re\n\n\ndef reward(completions, **kwargs):\n"
        "    if completions[0] == 'stuck':\n        re.match(r'(a+)+$', 'a' * 60 + 'b')\n"
        "    return [1.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ray_workers, "GRACE_S", 2.0)
    ws = WeightedRewards({"ray_gil_reward:reward": 1.0}, timeout_s=1.0, isolate=False, workers="ray", ray_actors=2)
    before = list(ws.ray_pool.actors)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="thinkrl.rewards"):
        total, per = ws(["stuck", "fine"], [{}, {}])
    assert time.monotonic() - t0 < 15
    assert per["ray_gil_reward:reward"] == [0.0, 0.0] and ws.errors["ray_gil_reward:reward"] == 1
    [why] = {s.reason for s in ws.scores(["stuck", "x"], [{}, {}])["ray_gil_reward:reward"]}
    assert "TimeoutError" in why and "killed and replaced" in why
    assert ws.ray_pool.actors[0] is not before[0] and "Ray reward worker 0" in caplog.text
    assert ws(["fine", "fine"], [{}, {}])[1]["ray_gil_reward:reward"] == [1.0, 1.0]  # the new actor scores


def test_a_dead_reward_worker_fails_its_batch_and_is_replaced(ray_cluster, caplog):
    ws = WeightedRewards({"format": 1.0}, workers="ray", ray_actors=2)
    good = "<think>a</think><answer>1</answer>"
    dead = ws.ray_pool.actors[1]
    ray.kill(dead)
    assert wait_dead(dead)
    with caplog.at_level(logging.WARNING, logger="thinkrl.rewards"):
        scored = ws.scores([good, good], [{}, {}])["format"]
    assert [s.value for s in scored] == [0.0, 0.0] and "RuntimeError: Ray reward worker 1 died" in scored[0].reason
    assert ws.ray_pool.actors[1] is not dead and "died scoring reward 'format'" in caplog.text
    assert ws([good, "x"], [{}, {}])[1]["format"] == [1.0, 0.0]


def test_ray_engine_without_ray_installed_is_a_config_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    for setting in ("rollout.engine=ray", "rewards.workers=ray"):
        with pytest.raises(ConfigError, match=r"pip install 'thinkrl\[ray\]'"):
            load_config(None, [setting])
    load_config(None, ["rollout.engine=hf"])  # nothing else was refused
    with pytest.raises(ValueError, match=r"pip install 'thinkrl\[ray\]'"):
        make_engine("ray", None, None, "cpu")
    assert "ray" in sys.modules  # (it is installed here: only its lookup was hidden)
