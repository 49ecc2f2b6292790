"""Process reward models (`thinkrl rm` with train.objective=step) and the `process_model` step
reward: the embedded task's step labels against the carries computed from the numbers, the
character-to-token mapping against decoding, the loss against a direct transcription of the
binary cross-entropy, the head read at each step against the row scored alone, a tiny PRM that
learns to tell right from wrong steps on held-out problems, the reward's contract, and resume."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest
import torch

from thinkrl.cli import main as cli_main
from thinkrl.policy import load_tokenizer
from thinkrl.rewards.steps import EQUATION_PATTERN, Step, is_step_reward
from thinkrl.task import arithmetic as A
from thinkrl.task.steps import corrupt_sum, label_steps, step_examples, step_splits
from thinkrl.train.reward_model import (RewardModel, encode_step_rows, load_reward_backbone, load_rm_config,
                                        step_bce_loss, train_reward_model)
from thinkrl.train.reward_model_data import step_metrics
from thinkrl.rewards.scorer import _decoded_starts, encode_steps, step_logits

pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------------------- step labels


def labels(a, b, text):
    return [s["label"] for s in label_steps(a, b, text)]


def test_labels_of_known_traces():
    # 347+85: columns 7+5 (carry out), 4+8 (carry in and out), 3+0 (carry in)
    assert labels(347, 85, A.completion(347, 85, "correct")) == [True, True, True]
    assert labels(347, 85, A.completion(347, 85, "buggy")) == [True, False, False]
    assert labels(347, 85, A.completion(347, 85, "reflective")) == [True, False, True, False, True]
    text = " <think>7+5=12 4+8=12 wait carry 4+8+1=13 3+0+1=4</think> <answer>432</answer>"
    assert label_steps(347, 85, text) == [{"end": 14, "label": True}, {"end": 21, "label": False},
                                          {"end": 41, "label": True}, {"end": 49, "label": True}]
    # a wrong sum, a wrong carry (one where none comes in), the wrong column, a step past the last column
    assert labels(347, 85, " 7+5=13 4+8+1=13 3+0+1=4") == [False, True, True]
    assert labels(347, 85, " 7+5+1=13 4+8+1=13 3+0+1=4") == [False, True, True]
    assert labels(347, 85, " 7+5=12 3+0+1=4") == [True, False]
    assert labels(347, 85, " 7+5=12 4+8+1=13 3+0+1=4 0+0=0") == [True, True, True, False]
    # the same digits in two columns with different carries: the step after a wrong one is the next
    # column's (no "wait"), so 225+225's buggy trace is right, wrong, right
    assert labels(225, 225, " 5+5=10 2+2=4 2+2=4") == [True, False, True]
    assert labels(55, 55, " 5+5=10 5+5=10 wait carry 5+5+1=11") == [True, False, True]
    assert label_steps(347, 85, " no working <answer>432</answer>") == []


def test_labels_of_every_generated_kind_follow_the_carries():
    """Against an independent reference on 400 problems: a correct trace is right throughout, a
    buggy one wrong exactly where a carry comes in, a reflective one wrong-then-right there."""
    rng = random.Random(3)
    for _ in range(100):
        for level in A.LEVELS:
            p = A.make_problem(rng, level)
            a, b = p["a"], p["b"]
            cin = []
            carry, x, y = 0, a, b
            for _ in range(max(len(str(a)), len(str(b)))):
                cin.append(carry)
                carry = (x % 10 + y % 10 + carry) // 10
                x, y = x // 10, y // 10
            assert labels(a, b, A.completion(a, b, "correct")) == [True] * len(cin)
            assert labels(a, b, A.completion(a, b, "buggy")) == [c == 0 for c in cin]
            assert labels(a, b, A.completion(a, b, "reflective")) == [v for c in cin for v in ([False, True] if c
                                                                                            else [True])]


def test_a_corrupted_sum_changes_one_digit_and_makes_that_step_wrong():
    rng = random.Random(0)
    for _ in range(200):
        text = A.completion(347, 85, "correct")
        bad = corrupt_sum(text, rng)
        diff = [i for i, (x, y) in enumerate(zip(text, bad)) if x != y]
        assert len(bad) == len(text) and len(diff) == 1 and bad[diff[0]].isdigit()
        [hit] = [m for m in re.finditer(EQUATION_PATTERN, bad) if m.start() <= diff[0] < m.end()]
        assert diff[0] > bad.index("=", hit.start())  # in the sum
        assert [s["end"] for s in label_steps(347, 85, bad) if not s["label"]] == [hit.end()]
        assert re.search(r"=0\d", bad) is None  # no sum gains a leading zero


def test_synthetic_examples_are_deterministic_and_held_out():
    train, test = step_splits(0, 400, 200)
    assert (train, test) == step_splits(0, 400, 200)
    assert train != step_splits(1, 400, 200)[0]
    _, train_p, test_p = A.make_splits(0)
    assert {r["question"] for r in test} <= {p["question"] for p in test_p}
    assert {r["question"] for r in train} <= {p["question"] for p in train_p}
    kinds = {r["kind"].split("+")[0] for r in train}
    assert kinds == {"correct", "buggy", "reflective", "off_format"}
    corrupted = sum(r["kind"].endswith("+corrupt") for r in train) / len(train)
    assert 0.18 < corrupted < 0.32  # 0.25 asked, 400 draws (standard error 0.022)
    for r in train[:50]:
        assert [m.end() for m in re.finditer(EQUATION_PATTERN, r["completion"])] == [s["end"] for s in r["steps"]]
    assert not any(r["kind"].endswith("corrupt") for r in step_examples(test_p, 50, 0, corrupt=0.0))


# ---------------------------------------------------------------------------- characters to tokens


@pytest.mark.parametrize("which", ["embedded", "bpe"])
def test_each_step_is_read_at_the_token_holding_its_last_character(which, qwen2_dir):
    tok = load_tokenizer("embedded" if which == "embedded" else str(qwen2_dir))
    rows = step_examples(A.make_splits(0, n_corpus=0)[2], 40, 5)
    prompts = [r["question"] for r in rows]
    seqs = encode_steps(tok, prompts, [r["completion"] for r in rows], [[s["end"] for s in r["steps"]] for r in rows])
    for r, prompt, (ids, positions) in zip(rows, prompts, seqs):
        head = len(tok(prompt, add_special_tokens=False)["input_ids"])
        body = ids[head:]
        assert tok.decode(body) == r["completion"]  # the reference below decodes exactly
        for s, pos in zip(r["steps"], positions):
            k = pos - head  # token k holds character end - 1: the text up to it covers the step, before it not
            assert len(tok.decode(body[: k + 1])) >= s["end"] > len(tok.decode(body[:k]))
    if which == "embedded":  # one token per digit: ' <think>7+5=12' ends at its '2', token 7
        [(ids, positions)] = encode_steps(tok, ["q"], [" <think>7+5=12 4+8+1=13"], [[14, 23]])
        head = len(tok("q", add_special_tokens=False)["input_ids"])
        assert [p - head for p in positions] == [7, 16]
        # the fallback for tokenizers without offsets gives the same starts
        enc = tok(" <think>7+5=12 4+8+1=13", add_special_tokens=False, return_offsets_mapping=True)
        assert _decoded_starts(tok, enc["input_ids"]) == [a for a, _ in enc["offset_mapping"]]


def test_step_logits_are_the_head_on_the_row_alone_at_each_step(qwen2_dir):
    tok = load_tokenizer(str(qwen2_dir))
    model = load_reward_backbone(str(qwen2_dir), torch.device("cpu"), seed=1).eval()
    rows = step_examples(A.make_splits(0, n_corpus=0)[2][:3], 3, 2)
    seqs = encode_steps(tok, [r["question"] for r in rows], [r["completion"] for r in rows],
                        [[s["end"] for s in r["steps"]] for r in rows])
    assert len({len(s) for s, _ in seqs}) > 1  # left padding happens
    with torch.no_grad():
        got = step_logits(model, [s for s, _ in seqs], [p for _, p in seqs], tok.pad_token_id).tolist()
        want = []
        base = getattr(model, model.base_model_prefix)
        for ids, positions in seqs:
            for p in positions:
                h = base(input_ids=torch.tensor([ids[: p + 1]])).last_hidden_state[0, -1]
                want.append(model.score(h).item())
    assert got == pytest.approx(want, abs=1e-5)


# ---------------------------------------------------------------------------- loss and metrics


def test_step_loss_is_the_binary_cross_entropy_of_the_sigmoid():
    s = torch.tensor([2.0, -1.0, 0.3, -4.0, 0.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([True, False, False, True, True])
    loss = step_bce_loss(s, y)
    sig = [1 / (1 + math.exp(-v)) for v in s.tolist()]
    expected = -sum(math.log(p) if t else math.log(1 - p) for p, t in zip(sig, y.tolist())) / 5
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    assert s.grad.tolist() == pytest.approx([(p - float(t)) / 5 for p, t in zip(sig, y.tolist())], abs=1e-12)
    assert step_bce_loss(torch.tensor([-300.0]), torch.tensor([True])).item() == pytest.approx(300.0)


def test_step_metrics_count_each_class_apart():
    m = step_metrics([1.0, 2.0, -1.0, 0.5, -3.0, 0.0], [True, True, True, False, False, False])
    # right steps: 2 of 3 above 0; wrong steps: 2 of 3 at or below 0 (0 is p = 0.5: not above the threshold)
    assert (m["accuracy"], m["accuracy_right"], m["accuracy_wrong"]) == (4 / 6, 2 / 3, 2 / 3)
    assert m["steps"] == 6 and m["wrong_share"] == 0.5


# ---------------------------------------------------------------------------- training and the reward


QUICK = ["run.progress=false", "run.threads=1", "train.objective=step", "data.train=synthetic:steps",
         "model.hidden_size=32", "data.synthetic_train=3000", "data.synthetic_test=300", "train.steps=300", "train.batch_size=16",
         "train.eval_every=0", "train.warmup_steps=10"]


@pytest.fixture(scope="module")
def prm(tmp_path_factory):
    """A tiny process reward model (configs/prm-tiny.yaml, 32 wide instead of 64) trained briefly."""
    cfg = load_rm_config(Path(__file__).parents[1] / "configs" / "prm-tiny.yaml", QUICK)
    return train_reward_model(cfg, tmp_path_factory.mktemp("prm"))


def test_a_tiny_prm_tells_right_from_wrong_steps_on_held_out_problems(prm):
    """Always "right" would score accuracy 1 - wrong_share (0.66) with no wrong step found, AUC 0.5.
    Measured with run.seed 0/1/2: accuracy 0.931/0.889/0.825, right steps 1.0/0.959/0.944, wrong
    steps 0.796/0.749/0.591, AUC 0.913/0.893/0.881 (10-13 s)."""
    t = prm["test"]
    assert t["test/steps"] > 800 and 0.2 < t["test/wrong_share"] < 0.45
    assert t["test/accuracy_right"] >= 0.85 and t["test/accuracy_wrong"] >= 0.5, t
    assert t["test/accuracy"] >= 0.78 and t["test/auc"] >= 0.8, t
    saved = json.loads((Path(prm["model_dir"]) / "thinkrl_rm.json").read_text())
    assert saved["objective"] == "step" and saved["test_accuracy"] == t["test/accuracy"]
    assert saved["test"]["test/accuracy_wrong"] == t["test/accuracy_wrong"] and saved["train"]["completions"] == 3000


def test_process_model_reward_scores_each_equation(prm):
    from thinkrl.rewards import REWARDS, get_reward

    reward = get_reward("process_model")
    assert is_step_reward(reward) and REWARDS["process_model"] is reward
    _, test = step_splits(0, 1, 40)
    comps, prompts = [r["completion"] for r in test] + [" <answer>5</answer>"], [r["question"] for r in test] + ["q"]
    got = reward(comps, prompts=prompts, path=prm["model_dir"], batch_size=7)
    assert len(got) == len(comps) and got[-1] == []
    rm = RewardModel.from_dir(prm["model_dir"], "cpu")
    raw = rm.score_steps(prompts[:-1], comps[:-1], [[s["end"] for s in r["steps"]] for r in test])
    for row, r, values in zip(got, test, raw):
        assert all(isinstance(s, Step) for s in row) and [s.end for s in row] == [s["end"] for s in r["steps"]]
        assert [s.score for s in row] == pytest.approx([1 / (1 + math.exp(-v)) for v in values], abs=1e-6)
        assert all(0 <= s.score <= 1 for s in row)
        assert [s.reason for s in row] == [f"step {k}: p={s.score:.2f}" for k, s in enumerate(row, 1)]
    alone = reward(comps[3:4], prompts=prompts[3:4], path=prm["model_dir"])  # batching changes nothing
    assert [s.score for s in alone[0]] == pytest.approx([s.score for s in got[3]], abs=1e-5)
    # the run's split: one Step per span, read at the span's end
    spans = [[(0, 9), (10, len(comps[0]))]]
    [row] = reward(comps[:1], steps=spans, prompts=prompts[:1], path=prm["model_dir"])
    assert [s.end for s in row] == [9, len(comps[0])]
    want = rm.score_steps(prompts[:1], comps[:1], [[9, len(comps[0])]])[0]
    assert [s.score for s in row] == pytest.approx([1 / (1 + math.exp(-v)) for v in want], abs=1e-6)


def test_process_model_reward_refuses_what_it_cannot_use(prm, tmp_path):
    from thinkrl.rewards import get_reward

    reward = get_reward("process_model")
    with pytest.raises(ValueError, match=r"rewards\.params\.process_model\.path"):
        reward([" 1+1=2"], prompts=["What is 1+1?"])
    with pytest.raises(ValueError, match="needs prompts"):
        reward([" 1+1=2"], path=prm["model_dir"])
    outcome = tmp_path / "outcome"
    outcome.mkdir()
    for f in Path(prm["model_dir"]).iterdir():
        (outcome / f.name).write_bytes(f.read_bytes())
    info = json.loads((outcome / "thinkrl_rm.json").read_text())
    (outcome / "thinkrl_rm.json").write_text(json.dumps({**info, "objective": "pairwise"}))
    with pytest.raises(ValueError, match="train.objective=step"):
        reward([" 1+1=2"], prompts=["What is 1+1?"], path=str(outcome))


# ---------------------------------------------------------------------------- data, settings, resume


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_trains_a_prm_on_a_users_step_labelled_jsonl(tmp_path, qwen2_dir, capsys):
    train, test = step_splits(0, 60, 20)
    tr = write_rows(tmp_path / "train.jsonl", [{"prompt": r["question"], "completion": r["completion"],
                                                 "steps": r["steps"]} for r in train])
    te = write_rows(tmp_path / "test.jsonl", [{"question": r["question"], "completion": r["completion"],
                                                "steps": [{**s, "label": int(s["label"])} for s in r["steps"]]}
                                               for r in test])
    out = tmp_path / "run"
    code = cli_main(["rm", "--out", str(out), "--no-progress", f"model.path={qwen2_dir}", "model.template=none",
                     "train.objective=step", f"data.train={tr}", f"data.test={te}", "train.steps=3",
                     "train.batch_size=8"])
    assert code == 0
    assert re.search(r"held-out step accuracy \d\.\d+ \(right steps \d\.\d+, wrong steps \d\.\d+\)",
                     capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "step" and summary["train"]["completions"] == 60
    assert summary["test"]["test/steps"] == sum(len(r["steps"]) for r in test)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and "test/accuracy_wrong" in lines[-1]


@pytest.mark.parametrize("steps,message", [
    ([{"end": 5, "label": True}, {"end": 5, "label": False}], "strictly increasing"),
    ([{"end": 99, "label": True}], "each in 1..11"),
    ([{"end": 3, "label": "yes"}], "must be"),
    (None, "field 'steps'"),
])
def test_malformed_step_rows_name_file_and_line(tmp_path, capsys, steps, message):
    good = {"prompt": "What is 1+1?", "completion": " 1+1=2 done", "steps": [{"end": 6, "label": True}]}
    bad = write_rows(tmp_path / "bad.jsonl", [good, {**good, "steps": steps}])
    assert cli_main(["rm", "--out", str(tmp_path / "run"), "train.objective=step", f"data.train={bad}",
                     "data.test=none"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and message in err


def test_step_settings_that_cannot_work_fail_at_start(capsys):
    assert cli_main(["rm", "data.train=synthetic:steps"]) == 2
    assert "set train.objective=step" in capsys.readouterr().err
    assert cli_main(["rm", "train.objective=step"]) == 2  # the default data are preference pairs
    assert "set train.objective=pairwise" in capsys.readouterr().err
    assert cli_main(["rm", "train.objective=step", "data.train=synthetic:steps", "data.part=summary",
                     "data.rule=helpfulness", "data.synthetic_corrupt=2", "train.objective=steps"]) == 2
    err = capsys.readouterr().err
    assert "train.objective 'steps'" in err and "data.synthetic_corrupt=2" in err
    assert cli_main(["rm", "train.objective=step", "data.train=synthetic:steps", "data.part=summary",
                     "data.rule=helpfulness"]) == 2
    err = capsys.readouterr().err
    assert "set data.part=whole" in err and "set data.rule=none" in err


def test_encoding_drops_rows_without_steps_or_too_long(qwen2_dir):
    tok = load_tokenizer(str(qwen2_dir))
    rows = [{"prompt": "q", "completion": " 1+1=2", "steps": [{"end": 6, "label": True}]},
            {"prompt": "q", "completion": " none", "steps": []},
            {"prompt": "q", "completion": " 1+1=2" * 50, "steps": [{"end": 6, "label": False}]}]
    kept, enc = encode_step_rows(tok, rows, "none", 40, "train")
    assert kept == rows[:1] and len(enc) == 1 and enc[0][2] == [True]


def test_a_prm_stopped_mid_run_resumes_into_the_uninterrupted_run(tmp_path, qwen2_dir):
    from tests.test_run_context import at_step, crash, read_metrics, rm, same_lines, same_weights

    step = {"train.objective": "step", "data.train": "synthetic:steps"}
    whole = rm(qwen2_dir, tmp_path / "whole", **step).run()
    killed = at_step(rm(qwen2_dir, tmp_path / "part", **step), 4, crash)  # dies in step 4: step 2's checkpoint
    with pytest.raises(RuntimeError, match="killed"):
        killed.run()
    torch.manual_seed(123)  # a fresh process's random state: the checkpoint must restore its own
    resumed = rm(qwen2_dir, tmp_path / "part", resume=True, **step)
    assert resumed.step == 2
    s = resumed.run()
    assert s["resumed_from"].endswith("step_000002")
    same_lines(read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "part"))
    assert s["test"] == pytest.approx(whole["test"], abs=1e-6) and "test/accuracy_right" in s["test"]
    cpu = torch.device("cpu")
    same_weights(load_reward_backbone(whole["model_dir"], cpu), load_reward_backbone(s["model_dir"], cpu))
