"""Rule rewards against real data (../shared/data) and hand-made cases."""

import json
import logging
import threading

import pytest

import thinkrl.rewards.math as rmath
from thinkrl.rewards import REWARDS, get_reward
from thinkrl.rewards.combine import WeightedRewards
from thinkrl.rewards.format import format_reward
from thinkrl.rewards.math import (accuracy_reward, extract_answer, final_answers, is_equivalent, parses,
                                  reference_answer)

from .shared_data import DATA, needs_data


def rows(path):
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


# ---------------------------------------------------------------- real data


@needs_data
def test_every_gsm8k_reference_parses():
    from math_verify import parse

    refs = [r["answer"] for r in rows(DATA / "gsm8k" / "test.jsonl")]
    assert len(refs) == 1319
    finals = [reference_answer(r) for r in refs]
    # the final answer is the integer after ####, thousands commas dropped
    assert finals[0] == "18"
    assert all(f is not None and f.lstrip("-").isdigit() for f in finals), [f for f in finals if not f.isdigit()]
    assert sum("," in r.rsplit("####", 1)[1] for r in refs) == 14  # e.g. `#### 1,450,000`
    assert "1450000" in finals
    # math-verify reads every one as that number
    parsed = [parse(f"${f}$") for f in finals]
    assert sum(bool(p) and p[0] == int(f) for p, f in zip(parsed, finals)) == 1319
    assert sum(parses(r) for r in refs) == 1319


@needs_data
def test_math500_worked_solutions_verify_against_their_own_answer():
    data = rows(DATA / "math500" / "test.jsonl")
    assert len(data) == 500
    # the solution (up to its closing line) as the completion: its last \boxed{} is the
    # prediction; the closing "The answer is: X" is the reference. Two independent
    # writings of the same answer ("\left( 3, \frac{\pi}{2} \right)", "\dfrac{14}{3}", ...)
    completions = [r["answer"].rsplit("The answer is:", 1)[0] for r in data]
    refs = [r["answer"].rsplit("The answer is:", 1)[1] for r in data]
    scores = accuracy_reward(completions, answer=refs, source="boxed")
    failed = [(refs[i], extract_answer(completions[i], "boxed")) for i, s in enumerate(scores) if s != 1.0]
    assert failed == []
    # a whole worked solution is also a reference: its final answer is the boxed one
    assert accuracy_reward(["<answer>\\left( 3, \\frac{\\pi}{2} \\right)</answer>"], answer=[data[0]["answer"]]) == [1.0]
    assert accuracy_reward(["<answer>(3, \\pi)</answer>"], answer=[data[0]["answer"]]) == [0.0]


@needs_data
def test_agreement_with_labelled_model_answers():
    """The labelled responses end in `\\boxed{X}` and/or `The answer is: X` (109 of 450 have
    no box), hence source="final". Measured: 448/448 agree."""
    agree = total = invalid = 0
    disagreements = []
    for path in sorted((DATA / "labeled_responses").glob("*.jsonl")):
        for problem in rows(path):
            outs = [o for o in problem["outputs"] if str(o["label"]) in ("True", "False")]
            invalid += len(problem["outputs"]) - len(outs)
            comps = [o["response"].replace("ки", "") for o in outs]
            scores = accuracy_reward(comps, answer=[problem["ground_truth"]] * len(comps), source="final")
            assert None not in scores  # every ground truth parses
            for o, s in zip(outs, scores):
                total += 1
                if (s == 1.0) == (str(o["label"]) == "True"):
                    agree += 1
                else:
                    disagreements.append((problem["ground_truth"], o["response_answer"], o["label"], s))
    assert (total, invalid) == (448, 2)
    assert agree / total >= 0.97, (agree, total, disagreements)


# ---------------------------------------------------------------- hand cases


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        (" <think>half</think> <answer>1/2</answer>", "0.5", 1.0),
        (" <think>x</think> <answer>\\frac{1}{2}</answer>", "0.5", 1.0),
        (" <think>x</think> <answer>0.5</answer>", "\\frac{1}{2}", 1.0),
        ("<answer>72.0</answer>", "#### 72", 1.0),
        ("<answer>72</answer>", "72.0", 1.0),
        ("<answer>1,000</answer>", "1000", 1.0),
        ("<answer>1000</answer>", "#### 1,000", 1.0),
        ("<answer>$18</answer>", "18", 1.0),  # a currency sign
        ("<answer>71</answer>", "#### 72", 0.0),  # wrong
        ("<answer>-72</answer>", "72", 0.0),
        ("<answer>0.6</answer>", "\\frac{1}{2}", 0.0),
        ("<answer>\\frac{2}{3}</answer>", "\\frac{1}{2}", 0.0),
        ("the answer is 72", "72", 0.0),  # no tags, no box: no final answer
        (" <think>so it is 72</think>", "72", 0.0),  # the answer only in the reasoning
        (" <think>\\boxed{72}</think> done", "72", 0.0),
        (" <think><answer>72</answer></think> <answer>7</answer>", "72", 0.0),
        (" <think>it is 72 <answer>72</answer>", "72", 0.0),  # thinking never closed
        (" <think>it is 72</think> <answer></answer>", "72", 0.0),  # empty answer
        (" <think>x</think> <answer>   </answer>", "72", 0.0),
        ("<answer>5</answer> then <answer>72</answer>", "72", 0.0),  # two answer blocks: a hedge
        ("<answer>72</answer> then <answer>5</answer>", "72", 0.0),
        ("so \\boxed{\\frac{3}{4}}", "\\frac{3}{4}", 1.0),  # no answer block: the last box
        (" <think>x</think> <answer>\\{1, 2\\}</answer>", "\\{2, 1\\}", 1.0),
        (" <think>x</think> <answer>[-2, 2]</answer>", "[-2,2]", 1.0),
        (" <think>x</think> <answer>(-2, 2)</answer>", "[-2,2]", 0.0),
        (" <think>x</think> <answer>3\\sqrt{2}</answer>", "\\sqrt{18}", 1.0),
        (" <think>x</think> <answer>3\\sqrt{2}</answer>", "3", 0.0),
        # percentages, units, equations, degrees (math-verify's leniencies, each with a wrong twin)
        (" <think>x</think> <answer>50\\%</answer>", "50", 1.0),
        (" <think>x</think> <answer>51\\%</answer>", "50", 0.0),
        (" <think>x</think> <answer>5 \\text{ cm}</answer>", "5", 1.0),
        (" <think>x</think> <answer>6\\,\\mathrm{cm}</answer>", "5", 0.0),
        (" <think>x</think> <answer>x = 3</answer>", "3", 1.0),
        (" <think>x</think> <answer>x = 4</answer>", "3", 0.0),
        (" <think>x</think> <answer>y = 2x + 1</answer>", "y=1+2x", 1.0),
        (" <think>x</think> <answer>y = 2x - 1</answer>", "y=1+2x", 0.0),
        (" <think>x</think> <answer>90^\\circ</answer>", "90", 1.0),
        (" <think>x</think> <answer>\\pi/2</answer>", "\\frac{\\pi}{2}", 1.0),
        (" <think>x</think> <answer>x \\in [1, 2)</answer>", "[1,2)", 1.0),
        (" <think>x</think> <answer>x \\in [1, 2]</answer>", "[1,2)", 0.0),
    ],
)
def test_accuracy_cases(completion, reference, expected):
    assert accuracy_reward([completion], answer=[reference]) == [expected]


def test_accuracy_batch_ignores_other_columns():
    comps = [" <think>a</think> <answer>4</answer>", " <think>a</think> <answer>5</answer>", "nothing"]
    assert accuracy_reward(comps, answer=["4", "4", "4"], level=[1, 2, 3], prompts=["q"] * 3) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="answer"):
        accuracy_reward(comps, level=[1, 2, 3])


def test_unparseable_reference_is_not_applicable():
    assert accuracy_reward(["<answer>3</answer>"], answer=["\\frac{"]) == [None]
    assert accuracy_reward(["<answer>3</answer>"], answer=[""]) == [None]
    assert accuracy_reward(["<answer>3</answer>"], answer=[None]) == [None]
    assert accuracy_reward(["<answer>3</answer>", "<answer>3</answer>"], answer=["\\frac{", "3"]) == [None, 1.0]


def test_reference_answer_forms():
    assert reference_answer("She makes 9 * 2 = $18.\n#### 18") == "18"
    assert reference_answer("so\n#### 1,450,000") == "1450000"
    assert reference_answer("Thus $\\boxed{\\frac{1}{2}}$.\nThe answer is: \\frac12") == "\\frac{1}{2}"
    assert reference_answer("We get 4, so the answer is 5.\nThe answer is: 7") == "7"
    assert reference_answer(" \\frac{3}{4} ") == "\\frac{3}{4}"
    assert reference_answer(72) == "72"
    assert reference_answer("") is None and reference_answer(None) is None


def test_extract_answer_sources():
    text = "\\boxed{0} <answer>2</answer> \\boxed{3}"
    assert extract_answer(text, "answer") == "2"
    assert extract_answer(text, "boxed") == "3"  # the last of two different boxes...
    assert final_answers(text, "boxed") == (["0", "3"], "")  # ...both of which must be right
    assert extract_answer(text) == "2"
    assert extract_answer("x \\boxed{3}") == "3"
    assert extract_answer("\\boxed{\\frac{a}{b}} tail", "boxed") == "\\frac{a}{b}"
    assert extract_answer("\\fbox{ 12 }", "boxed") == "12"
    assert extract_answer("so \\boxed 5 done", "boxed") == "5"
    assert extract_answer("cut off \\boxed{\\frac{1}{2}", "boxed") is None
    assert extract_answer("no answer here") is None
    # "final" falls back to the last closing `The answer is: X`
    assert extract_answer("The answer is: 4\nno, 5.\nThe answer is: 5.", "final") == "5"
    assert extract_answer("The answer is: 5", "answer_or_boxed") is None
    assert extract_answer("\\boxed{4}\nThe answer is: 5", "final") == "4"
    # reasoning is skipped
    assert extract_answer("<think><answer>1</answer></think><answer>2</answer>") == "2"
    assert extract_answer("<think>\\boxed{1}</think>") is None
    assert extract_answer("reasoning with no open tag</think><answer>3</answer>") == "3"
    with pytest.raises(ValueError, match="answer_or_boxed"):
        extract_answer(text, "last_line")


NUMBER_PAIRS = [
    ("72", "72"), ("72", "72.0"), ("72", "72."), ("72", "71"), ("1,000", "1000"), ("2,125", "2125"),
    ("-3", "3"), ("-3", "-3"), ("+3", "3"), ("-0", "0"), ("0.5", ".5"), ("1.5", "1.50"), ("007", "7"),
    ("1", "1.000001"), ("1", "1.0000001"), ("0.333333", "0.3333333"), ("1000000", "1000000.4"),
    ("12345678901234567890", "12345678901234567891"), ("18", "$18"), ("18", "\\$18"), ("3.14", "3.140"),
    ("1,2", "12"), ("0.1", "0.10000001"),
]


@pytest.mark.parametrize("gold, pred", NUMBER_PAIRS)
def test_number_fast_path_agrees_with_math_verify(gold, pred):
    from math_verify import parse, verify

    expected = verify(parse(f"${gold}$"), parse(rmath._wrap(pred)))
    assert is_equivalent(gold, pred) == expected


def test_number_fast_path_is_taken_for_plain_numbers(monkeypatch):
    import math_verify

    def no_math_verify(*a, **k):
        raise AssertionError("math-verify called for plain numbers")

    monkeypatch.setattr(math_verify, "verify", no_math_verify)
    monkeypatch.setattr(math_verify, "parse", no_math_verify)
    comps = [f" <think>x</think> <answer>{v}</answer>" for v in ("72", "72.0", "1,000", "$5", "-2")]
    assert accuracy_reward(comps, answer=["72", "#### 72", "1000", "5", "2"]) == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_off_the_main_thread_math_verify_runs_without_signals():
    result = {}

    def work():
        comps = [" <think>x</think> <answer>\\frac{1}{2}</answer>", " <think>x</think> <answer>\\frac{1}{3}</answer>"]
        try:
            result["scores"] = accuracy_reward(comps, answer=["0.5", "0.5"])
            result["timeout"] = rmath._timeout()
        except BaseException as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert result == {"scores": [1.0, 0.0], "timeout": None}
    assert rmath._timeout() == 5  # on the main thread math-verify's own limits apply


def test_a_failing_verification_scores_zero_and_warns(monkeypatch, caplog):
    import math_verify
    from math_verify.errors import TimeoutException

    def boom(*a, **k):
        raise RuntimeError("sympy blew up")

    def slow(*a, **k):
        raise TimeoutException("Operation timed out!")

    comps = [" <think>x</think> <answer>\\frac{1}{2}</answer>", " <think>x</think> <answer>7</answer>"]
    for fn in (boom, slow):
        monkeypatch.setattr(math_verify, "verify", fn)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="thinkrl.rewards"):
            # the plain-number pair never reaches math-verify
            assert accuracy_reward(comps, answer=["0.5", "7"], workers=0) == [0.0, 1.0]
        assert any("failed" in r.getMessage() or "raised" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- format


@pytest.mark.parametrize(
    "completion, expected",
    [
        (" <think>7+5=12</think> <answer>12</answer>", 1.0),
        ("<think>a</think>\n<answer>b</answer>\n", 1.0),
        ("<think>\nmulti\nline\n</think>\n\n<answer>\n12\n</answer>", 1.0),
        ("<think></think><answer>12</answer>", 1.0),  # an empty think block is still the format
        (" 7+5=12 <answer>12</answer>", 0.0),  # no think block
        (" <think>7+5=12</think> 12", 0.0),  # no answer block
        (" 7+5=12 so 12", 0.0),  # no tags at all
        ("<think>a</think><answer>1</answer><answer>2</answer>", 0.0),  # two answers
        ("<think>a</think><answer>1</answer> and more", 0.0),  # text after the answer
        ("<think>a</think> between <answer>1</answer>", 0.0),  # text between the blocks
        ("preamble <think>a</think><answer>1</answer>", 0.0),  # text before the think block
        ("<think>a</think><answer> </answer>", 0.0),  # empty answer
        ("<think>a<think>b</think><answer>1</answer>", 0.0),  # nested think
        ("<think>a</think><think>b</think><answer>1</answer>", 0.0),  # two think blocks
        ("<answer>1</answer><think>a</think>", 0.0),  # wrong order
        ("<think>a</think><answer>1", 0.0),  # stops mid-answer
    ],
)
def test_format_cases(completion, expected):
    assert format_reward([completion]) == [expected]


def test_format_batch_ignores_columns():
    assert format_reward(["<think>a</think><answer>1</answer>", "x"], answer=["1", "2"], prompts=["q", "q"]) == [1.0, 0.0]


# ---------------------------------------------------------------- registry


def test_registry_and_import_paths():
    assert set(REWARDS) >= {"accuracy", "format"}
    assert get_reward("accuracy") is accuracy_reward
    assert get_reward("format") is format_reward
    assert get_reward("thinkrl.rewards.format:format_reward") is format_reward
    assert get_reward("tests.test_rewards:broken_reward") is broken_reward
    with pytest.raises(ValueError, match="registered: accuracy, code, column_steps, cosine_length, format"):
        get_reward("acuracy")
    with pytest.raises(ValueError, match="cannot import"):
        get_reward("nowhere.module:fn")
    with pytest.raises(ValueError, match="cannot import"):
        get_reward("thinkrl.rewards.format:no_such_reward")
    with pytest.raises(ValueError, match="not callable"):
        get_reward("thinkrl.rewards:REWARDS")


def broken_reward(completions, **kwargs):
    raise RuntimeError("boom")


def test_weighted_sum_logs_each_and_survives_a_broken_reward():
    ws = WeightedRewards({"accuracy": 2.0, "format": 0.5, "tests.test_rewards:broken_reward": 1.0})
    comps = [" <think>a</think> <answer>4</answer>", " <answer>5</answer>"]
    total, per = ws(comps, [{"answer": "4"}, {"answer": "4"}])
    assert per["accuracy"] == [1.0, 0.0] and per["format"] == [1.0, 0.0]
    assert per["tests.test_rewards:broken_reward"] == [0.0, 0.0]
    assert total == [2.5, 0.0]


# ---------------------------------------------------------------- reward hacking: each scores 0


HACKS = [
    ("several different boxed answers", " <think>x</think> \\boxed{3} or \\boxed{4}", "4"),
    ("several different boxes in the answer", " <think>x</think> <answer>\\boxed{4}, \\boxed{5}</answer>", "4"),
    ("a list of candidates", " <think>x</think> <answer>3, 4, 5</answer>", "4"),
    ("candidates joined by or", " <think>x</think> <answer>3 or 4</answer>", "4"),
    ("candidates in text", " <think>x</think> <answer>4 \\text{ or } 5</answer>", "4"),
    ("candidate equations", " <think>x</think> <answer>x = 3 or x = 4</answer>", "x=4"),
    ("a candidate set", " <think>x</think> <answer>\\{\\frac{1}{2}, \\frac{1}{3}\\}</answer>", "\\frac{1}{2}"),
    ("the answer only in the reasoning", " <think>it is 4 <answer>4</answer> \\boxed{4}</think>", "4"),
    ("an empty answer", " <think>x</think> <answer></answer>", "4"),
    ("a whitespace answer", " <think>x</think> <answer> \n\t </answer>", "4"),
    ("repeated answer tags", " <think>x</think> <answer>5</answer><answer>4</answer>", "4"),
    ("repeated identical answer tags", " <think>x</think> <answer>4</answer><answer>4</answer>", "4"),
    ("nested answer tags", " <think>x</think> <answer><answer>4</answer></answer>", "4"),
    ("nested with a wrong outer", " <think>x</think> <answer>5 <answer>4</answer></answer>", "4"),
    ("a claim of correctness", " <think>x</think> <answer>The answer above is correct.</answer>", "4"),
    ("a claim in text", " <think>x</think> <answer>\\text{correct}</answer>", "\\frac{1}{2}"),
    ("a claim of verification", " <think>x</think> <answer>verified: the reference answer</answer>", "\\frac{1}{2}"),
    ("stops mid-tag", " <think>x</think> <answer>4</ans", "4"),
    ("stops inside the answer", " <think>x</think> <answer>4", "4"),
    ("stops mid-box", " <think>x</think> \\boxed{\\frac{1}{2}", "\\frac{1}{2}"),
    ("a huge completion", " <think>" + "think " * 50_000 + "</think> <answer>4</answer>", "4"),
    ("a huge answer", " <think>x</think> <answer>" + "4" * 5000 + "</answer>", "4"),
    ("a huge symbolic answer", " <think>x</think> <answer>" + "x+" * 600 + "x</answer>", "601*x"),
]


@pytest.mark.parametrize("name, completion, reference", HACKS, ids=[h[0] for h in HACKS])
def test_reward_hacks_score_zero_with_a_reason(name, completion, reference):
    [scored] = accuracy_reward.scores([completion], answer=[reference])
    assert scored.value == 0.0 and scored.reason, scored


def test_the_honest_versions_of_the_hacks_score_one():
    """Guards the hack tests: each would pass trivially if the reward scored everything 0."""
    honest = [(" <think>x</think> \\boxed{4}", "4"), (" <think>x</think> <answer>\\boxed{4}</answer>", "4"),
              (" <think>x</think> <answer>x = 4</answer>", "x=4"), (" <think>x</think> <answer>4</answer>", "4"),
              (" <think>x</think> <answer>\\frac{1}{2}</answer>", "\\frac{1}{2}"),
              (" <think>" + "think " * 1000 + "</think> <answer>4</answer>", "4"),
              (" <think>x</think> \\boxed{4} so \\boxed{ 4 }", "4"),  # the same answer twice
              (" <think>x</think> \\boxed{15\\frac{39}{40}}, or \\boxed{\\frac{639}{40}}", "\\frac{639}{40}")]
    assert accuracy_reward([c for c, _ in honest], answer=[r for _, r in honest]) == [1.0] * len(honest)


def test_a_pathological_answer_times_out_and_training_goes_on(caplog):
    comps = [" <think>x</think> <answer>9^{9^{9^{9}}}</answer>", " <think>x</think> <answer>\\frac{2}{4}</answer>"]
    with caplog.at_level(logging.WARNING, logger="thinkrl.rewards"):
        scores = accuracy_reward.scores(comps, answer=["\\frac{1}{2}"] * 2, timeout_s=2)
    assert scores[0].value == 0.0 and "timeout" in scores[0].reason
    assert scores[1].value == 1.0
    assert any("timeout" in r.getMessage() and "9^{9^{9^{9}}}" in r.getMessage() for r in caplog.records)


def test_an_unparseable_reference_is_reported_once_and_skipped(caplog):
    ref = "\\frac{unclosed"
    comps = [" <think>x</think> <answer>4</answer>", " <think>x</think> <answer>\\frac{1}{2}</answer>", "no answer"]
    rmath._REPORTED.discard(ref)
    with caplog.at_level(logging.WARNING, logger="thinkrl.rewards"):
        first = accuracy_reward.scores(comps, answer=[ref] * 3)
        second = accuracy_reward(comps, answer=[ref] * 3)
    assert [s.value for s in first] == [None] * 3 and second == [None] * 3
    assert all("reference" in s.reason for s in first)
    assert sum("cannot be parsed" in r.getMessage() for r in caplog.records) == 1


def test_reasons_say_why_a_sample_scored_zero():
    comps = [" <think>x</think> <answer>5</answer>", " <think>x</think>", " <think>x</think> <answer>\\frac{1}{3}</answer>",
             " <think>x</think> <answer>4</answer>"]
    scores = accuracy_reward.scores(comps, answer=["4", "4", "\\frac{1}{2}", "4"])
    assert [s.value for s in scores] == [0.0, 0.0, 0.0, 1.0]
    assert scores[0].reason == "5 is not 4"
    assert scores[1].reason == "nothing after the reasoning"
    assert "\\frac{1}{3} is not \\frac{1}{2}" == scores[2].reason
    assert scores[3].reason == ""
