"""Rule rewards against real data (../shared/data) and hand-made cases."""

import json
from pathlib import Path

import pytest

from thinkrl.rewards import REWARDS, get_reward
from thinkrl.rewards.combine import WeightedRewards
from thinkrl.rewards.format import format_reward
from thinkrl.rewards.math import accuracy_reward, extract_answer, parses, reference_answer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason="../shared/data is not beside the checkout")


def rows(path):
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


@needs_data
def test_every_gsm8k_reference_parses():
    refs = [r["answer"] for r in rows(DATA / "gsm8k" / "test.jsonl")]
    assert len(refs) == 1319
    assert sum(parses(r) for r in refs) == 1319
    assert reference_answer(refs[0]) == refs[0].rsplit("####", 1)[1].strip().replace(",", "")


@needs_data
def test_math500_worked_solutions_verify_against_their_own_answer():
    data = rows(DATA / "math500" / "test.jsonl")
    assert len(data) == 500
    sample = data[::5]  # 100 problems; the rewards issue checks all 500
    # the solution's last \boxed{} is the prediction; its closing "The answer is:" the reference
    completions = [r["answer"].rsplit("The answer is:", 1)[0] for r in sample]
    refs = [r["answer"].rsplit("The answer is:", 1)[1] for r in sample]
    scores = accuracy_reward(completions, answer=refs, source="boxed")
    failed = [(refs[i], extract_answer(completions[i], "boxed")) for i, s in enumerate(scores) if s != 1.0]
    assert len(failed) <= 1, failed


@needs_data
def test_agreement_with_labelled_model_answers():
    agree = total = 0
    disagreements = []
    for path in sorted((DATA / "labeled_responses").glob("*.jsonl")):
        for problem in rows(path):
            outs = [o for o in problem["outputs"] if o["label"] in ("True", "False", True, False)]
            comps = [o["response"].replace("ки", "") for o in outs]
            scores = accuracy_reward(comps, answer=[problem["ground_truth"]] * len(comps), source="final")
            for o, s in zip(outs, scores):
                label = str(o["label"]) == "True"
                total += 1
                if (s == 1.0) == label:
                    agree += 1
                else:
                    disagreements.append((problem["ground_truth"], o["response_answer"], label))
    assert total >= 400
    assert agree / total >= 0.97, (agree, total, disagreements[:10])


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("<think>half</think><answer>1/2</answer>", "0.5", 1.0),
        ("<think>x</think><answer>\\frac{1}{2}</answer>", "0.5", 1.0),
        ("<answer>72.0</answer>", "#### 72", 1.0),
        ("<answer>1,000</answer>", "1000", 1.0),
        ("<answer>71</answer>", "#### 72", 0.0),
        ("the answer is 72", "72", 0.0),  # no tags, no box: no final answer
        ("<think><answer>72</answer>? no</think>", "72", 1.0),  # the tags are what count
        ("<think>it is 72</think><answer></answer>", "72", 0.0),  # empty answer
        ("<think>x</think><answer>   </answer>", "72", 0.0),
        ("<answer>5</answer> then <answer>72</answer>", "72", 1.0),  # the last answer block
        ("so \\boxed{\\frac{3}{4}}", "\\frac{3}{4}", 1.0),
        ("<answer>\\{1, 2\\}</answer>", "\\{2, 1\\}", 1.0),
    ],
)
def test_accuracy_cases(completion, reference, expected):
    assert accuracy_reward([completion], answer=[reference]) == [expected]


def test_unparseable_reference_is_not_applicable():
    assert accuracy_reward(["<answer>3</answer>"], answer=["\\frac{"]) == [None]
    assert accuracy_reward(["<answer>3</answer>"], answer=[""]) == [None]


def test_extract_answer_sources():
    text = "<think>\\boxed{1}</think><answer>2</answer> \\boxed{3}"
    assert extract_answer(text, "answer") == "2"
    assert extract_answer(text, "boxed") == "3"
    assert extract_answer("\\boxed{\\frac{a}{b}} tail", "boxed") == "\\frac{a}{b}"
    assert extract_answer("no answer here") is None
    with pytest.raises(ValueError):
        extract_answer(text, "last_line")


@pytest.mark.parametrize(
    "completion, expected",
    [
        (" <think>7+5=12</think> <answer>12</answer>", 1.0),
        ("<think>a</think>\n<answer>b</answer>\n", 1.0),
        (" 7+5=12 <answer>12</answer>", 0.0),  # no think block
        (" <think>7+5=12</think> 12", 0.0),  # no answer block
        ("<think>a</think><answer>1</answer><answer>2</answer>", 0.0),  # two answers
        ("<think>a</think><answer>1</answer> and more", 0.0),  # text after the answer
        ("<think>a</think><answer> </answer>", 0.0),  # empty answer
        ("<think>a<think>b</think><answer>1</answer>", 0.0),  # nested think
        ("<answer>1</answer><think>a</think>", 0.0),  # wrong order
        ("<think>a</think><answer>1", 0.0),  # stops mid-answer
    ],
)
def test_format_cases(completion, expected):
    assert format_reward([completion]) == [expected]


def test_registry_and_import_paths():
    assert get_reward("accuracy") is REWARDS["accuracy"]
    assert get_reward("thinkrl.rewards.format:format_reward") is format_reward
    with pytest.raises(ValueError, match="registered: accuracy, format"):
        get_reward("acuracy")
    with pytest.raises(ValueError, match="cannot import"):
        get_reward("nowhere.module:fn")


def broken_reward(completions, **kwargs):
    raise RuntimeError("boom")


def test_weighted_sum_logs_each_and_survives_a_broken_reward():
    ws = WeightedRewards({"accuracy": 2.0, "format": 0.5, "tests.test_rewards:broken_reward": 1.0})
    comps = [" <think>a</think> <answer>4</answer>", " <answer>5</answer>"]
    total, per = ws(comps, [{"answer": "4"}, {"answer": "4"}])
    assert per["accuracy"] == [1.0, 0.0] and per["format"] == [1.0, 0.0]
    assert per["tests.test_rewards:broken_reward"] == [0.0, 0.0]
    assert total == [2.5, 0.0]
