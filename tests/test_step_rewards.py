"""Step rewards (issue 19, process supervision): the contract in `rewards.steps` (split_steps,
WeightedStepRewards, the start-up checks), the embedded task's rule step reward `column_steps`
against the traces the task's own generator writes, and `thinkrl score` with step rewards."""

import json
import math
import random
import re
import sys

import pytest

from thinkrl.cli import main
from thinkrl.rewards import REWARDS
from thinkrl.rewards.steps import (EQUATION_PATTERN, Step, WeightedStepRewards, is_step_reward,
                                   outcome_reward_problems, split_steps, step_reward_problems)
from thinkrl.task.arithmetic import LEVELS, completion, make_problem

column_steps = REWARDS["column_steps"]


# ---- split_steps -------------------------------------------------------------------------

@pytest.mark.parametrize("text, pattern, spans", [
    ("a\n\nbb \n\n\n\n c", r"\n\n", [(0, 1), (3, 5), (11, 12)]),  # pieces trimmed; the empty one dropped
    ("  one  ", r"\n\n", [(2, 5)]),  # no separator: the whole text, trimmed
    (" \n\n \n\n", r"\n\n", []),  # whitespace only: no step
    ("Step 1: x. Step 2: y.", r"(?=Step )", [(0, 10), (11, 21)]),  # an empty match cuts before "Step "
    ("x;y;", ";", [(0, 1), (2, 3)]),
])
def test_split_steps_pieces_between_separators(text, pattern, spans):
    assert split_steps(text, pattern) == spans
    for start, end in spans:  # each span is a piece without the separator or surrounding whitespace
        piece = text[start:end]
        assert piece == piece.strip() and piece and not re.search(pattern.replace("(?=Step )", "^$"), piece)


# ---- column_steps on the task's own traces -------------------------------------------------

def carry_into(a: int, b: int, col: int) -> int:
    """1 when the columns below `col` (0 = units) carry into it: an independent reference."""
    m = 10 ** col
    return int(a % m + b % m >= m)


def n_columns(a: int, b: int) -> int:
    return max(len(str(a)), len(str(b)))


def expected_scores(a: int, b: int, kind: str) -> list[float]:
    scores = []
    for col in range(n_columns(a, b)):
        carried = carry_into(a, b, col)
        scores += {"correct": [1.0], "buggy": [0.0 if carried else 1.0],
                   "reflective": [0.0, 1.0] if carried else [1.0]}[kind]
    return scores


def problems(n_per_level: int = 60):
    rng = random.Random(19)
    return [make_problem(rng, level) for level in LEVELS for _ in range(n_per_level)]


@pytest.mark.parametrize("kind", ["correct", "buggy", "reflective"])
def test_column_steps_on_generated_traces(kind):
    ps = problems()
    texts = [completion(p["a"], p["b"], kind) for p in ps]
    got = column_steps(texts, prompts=[p["question"] for p in ps])
    for p, text, steps in zip(ps, texts, got):
        assert [s.score for s in steps] == expected_scores(p["a"], p["b"], kind), text
        # each step ends at the end of one equation, in order
        assert [s.end for s in steps] == [m.end() for m in re.finditer(EQUATION_PATTERN, text)]
        for s in steps:
            assert bool(s.reason) == (s.score == 0.0)
            if s.score == 0.0:
                assert "forgets the carry" in s.reason
    if kind != "correct":  # a carry that only leaves the top column (91+10) is in no step: all steps right
        top_only = [all(not carry_into(p["a"], p["b"], c) for c in range(n_columns(p["a"], p["b"]))) for p in ps]
        assert [not any(s.score == 0.0 for s in steps) for steps in got] == top_only and 0 < sum(top_only) < len(ps)


def test_column_steps_off_format_traces_follow_their_working():
    rng = random.Random(3)
    ps = problems(10)
    for p in ps:
        text = completion(p["a"], p["b"], "off_format", rng)
        [steps] = column_steps([text], a=[p["a"]], b=[p["b"]])  # numbers from the a/b columns
        assert [s.score for s in steps] in (expected_scores(p["a"], p["b"], "correct"),
                                            expected_scores(p["a"], p["b"], "buggy")), text


def one(text: str, question: str = "What is 347+85?") -> list[Step]:
    [steps] = column_steps([text], prompts=[question])
    return steps


def test_column_steps_reasons_on_hand_made_traces():
    right = "<think>7+5=12 4+8+1=13 3+0+1=4</think>"
    assert [s.score for s in one(right)] == [1.0, 1.0, 1.0]
    assert [s.score for s in one("<think>5+7=12 8+4+1=13 0+3+1=4</think>")] == [1.0, 1.0, 1.0]  # either order
    assert one("<think>7+5=12 4+8=12 3+0=3</think>")[1].reason == "column 2: 4+8=12 forgets the carry"
    s = one("<think>7+5=13 4+8+1=13</think>")
    assert [x.score for x in s] == [0.0, 1.0] and "column 1: 7+5=13 is wrong" in s[0].reason
    s = one("<think>7+5+1=13</think>")
    assert s[0].score == 0.0 and "adds a carry to the units" in s[0].reason
    s = one("<think>7+5=12 4+8+2=14</think>")
    assert s[1].score == 0.0 and "carry is 1" in s[1].reason
    s = one("<think>7+5=12 4+8+1=13 3+0+1=4 0+0+1=1</think>")  # the last carry is not a column
    assert [x.score for x in s] == [1.0, 1.0, 1.0, 0.0] and "extra step" in s[3].reason
    s = one("<think>7+5=12 3+0+1=4 4+8+1=13</think>")  # column 3 before column 2
    assert [x.score for x in s] == [1.0, 0.0, 1.0] and "column 3 out of order" in s[1].reason
    s = one("<think>7+5=12 7+5=12 4+8+1=13</think>")
    assert [x.score for x in s] == [1.0, 0.0, 1.0] and "column 1 out of order" in s[1].reason
    s = one("<think>7+5=12 4+9+1=14 3+0+1=4</think>")  # a misread digit uses up column 2
    assert [x.score for x in s] == [1.0, 0.0, 1.0] and "does not add its digits 4+8" in s[1].reason
    s = one("<think>7+5=12 4+8=12 wait 4+8=12 wait carry 4+8+1=13 3+0+1=4</think>")  # a failed fix, then a fix
    assert [x.score for x in s] == [1.0, 0.0, 0.0, 1.0, 1.0] and s[2].reason == "column 2: 4+8=12 forgets the carry"
    assert one("<think>no working</think> <answer>432</answer>") == []  # no equation: no steps
    assert one("<think>7+5=12</think> 1+1=2") == [Step(13, 1.0, "")]  # only the <think> block is read
    assert [x.score for x in one("7+5=12 4+8+1=13")] == [1.0, 1.0]  # no <think> tag: the whole text


def test_column_steps_same_digit_columns_and_problem_sources():
    # 555+555: every column has the digits 5,5, so a fix and the next column look alike
    text = "<think>5+5=10 5+5=10 wait carry 5+5+1=11 5+5=10 wait carry 5+5+1=11</think>"
    assert [s.score for s in one(text, "What is 555+555?")] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert [s.score for s in one("<think>5+5=10 5+5=10 5+5=10</think>", "What is 555+555?")] == [1.0, 0.0, 0.0]
    text = "<think>7+5=12 4+8+1=13 3+0+1=4</think>"
    # the a/b columns win over the prompt; the question column is read when there is no prompt
    assert [s.score for s in column_steps([text], prompts=["What is 1+1?"], a=[347], b=[85])[0]] == [1.0] * 3
    assert [s.score for s in column_steps([text], question=["What is 347+85?"])[0]] == [1.0] * 3
    assert column_steps([text], prompts=["Add these."]) == [[]]  # no problem to check against
    templated = "A conversation... User: What is 347+85? Assistant:"
    assert [s.score for s in column_steps([text], prompts=[templated])[0]] == [1.0] * 3


def test_column_steps_with_given_spans():
    text = " <think>7+5=12 4+8=12 wait carry 4+8+1=13 3+0+1=4</think> <answer>432</answer>"
    spans = split_steps(text, r"\s+")
    [steps] = column_steps([text], steps=[spans], prompts=["What is 347+85?"])
    assert [s.end for s in steps] == [e for _, e in spans]  # one Step per span, ending where it ends
    assert [s.score for s in steps] == [1.0, 0.0, None, None, 1.0, 1.0, None]
    [own] = column_steps([text], prompts=["What is 347+85?"])
    assert [s.score for s in own] == [s.score for s in steps if s.score is not None]
    # a span holding several equations scores 0 if any is wrong
    whole = [(1, len(text))]
    [[step]] = column_steps([text], steps=[whole], prompts=["What is 347+85?"])
    assert step.end == len(text) and step.score == 0.0 and "forgets the carry" in step.reason


# ---- WeightedStepRewards -----------------------------------------------------------------

USER = '''
import math, time
from thinkrl.rewards.steps import Step, step_reward

@step_reward
def words(completions, *, steps=None, **kwargs):
    """Per span: 1 for a word with an "a", 0 without; None for "-". Own split: one step per text."""
    if steps is None:
        return [[Step(len(c), 1.0)] for c in completions]
    return [[Step(e, None if c[s:e] == "-" else float("a" in c[s:e])) for s, e in sp]
            for c, sp in zip(completions, steps)]

@step_reward
def halves(completions, *, steps=None, **kwargs):
    return [[Step(e, 0.5, "half") for _, e in sp] for sp in steps]

@step_reward
def raises(completions, **kwargs):
    raise RuntimeError("boom")

@step_reward
def short(completions, **kwargs):
    return [[] for _ in completions[1:]]

@step_reward
def backwards(completions, **kwargs):
    return [[Step(2, 1.0), Step(1, 1.0)] if c.startswith("bad") else [Step(1, 1.0)] for c in completions]

@step_reward
def too_far(completions, **kwargs):
    return [[Step(len(c) + 1, 1.0)] for c in completions]

@step_reward
def not_spans(completions, *, steps=None, **kwargs):
    return [[Step(len(c), 1.0)] for c in completions]

@step_reward
def odd(completions, **kwargs):
    return [0.5 if c.startswith("bad") else [Step(1, 1.0)] for c in completions]

@step_reward
def nan(completions, **kwargs):
    return [[Step(1, math.nan), Step(2, 1.0)] for c in completions]

@step_reward
def sleeps(completions, **kwargs):
    time.sleep(30)

def plain(completions, **kwargs):
    return [1.0] * len(completions)
'''


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    (d / "h1_step_fixtures.py").write_text(USER)
    sys.path.insert(0, str(d))
    yield lambda name: f"h1_step_fixtures:{name}"
    sys.path.remove(str(d))


TEXTS = ["cat - dog", "badger  ox"]


def test_weighted_step_rewards_sum_on_a_shared_split(user):
    r = WeightedStepRewards({user("words"): 2.0, user("halves"): -1.0}, split=r"\s+", isolate=False)
    steps, per = r(TEXTS, [{}, {}])
    # "cat" (0,3): 2*1 - 0.5; "-" (4,5): words None, halves 0.5; "dog" (6,9): 2*0 - 0.5 ...
    assert steps == [[(3, 1.5), (5, -0.5), (9, -0.5)], [(6, 1.5), (10, -0.5)]]
    assert per == {user("words"): [0.5, 0.5], user("halves"): [0.5, 0.5]}
    assert r.errors == {user("words"): 0, user("halves"): 0}


def test_weighted_step_rewards_need_a_shared_split_to_sum(user):
    r = WeightedStepRewards({user("words"): 1.0, user("halves"): 1.0}, isolate=False)
    with pytest.raises(ValueError, match="shared split"):
        r(TEXTS, [{}, {}])
    steps, per = WeightedStepRewards({user("words"): 1.0}, isolate=False)(TEXTS, [{}, {}])
    assert steps == [[(9, 1.0)], [(10, 1.0)]]  # its own split: one step per text


FAILED_SPANS = [[(3, -1.0), (5, -1.0), (9, -1.0)], [(6, -1.0), (10, -1.0)]]  # the \s+ spans of TEXTS, on_error


@pytest.mark.parametrize("name, split, expect, errors", [
    ("raises", "", [[], []], 1),  # own split: a failed batch gives no steps (one error: the batch)
    ("raises", r"\s+", FAILED_SPANS, 1),  # a split: its spans score on_error
    ("short", "", [[], []], 1),  # one list for two completions
    ("too_far", "", [[], []], 2),  # an end past the text, in each completion
    ("backwards", "", [[(1, 1.0)], []], 1),  # only the broken completion fails
    ("odd", "", [[(1, 1.0)], []], 1),  # a number, not a list of Steps, for one completion
    ("not_spans", r"\s+", FAILED_SPANS, 2),  # ends that are not the spans' ends
])
def test_weighted_step_rewards_count_broken_rewards(user, name, split, expect, errors):
    texts = ["cat - dog", "bad dog"] if name in ("backwards", "odd") else TEXTS
    r = WeightedStepRewards({user(name): 1.0}, split=split, on_error=-1.0, isolate=False)
    got = r.scores(texts, [{}, {}])[user(name)]
    assert [[(s.end, s.score) for s in steps] for steps in got] == expect
    assert r.errors[user(name)] == errors
    assert all(s.reason for steps in got for s in steps if s.score == -1.0)  # every failed step says why


def test_weighted_step_rewards_nan_is_counted_and_unscored(user):
    r = WeightedStepRewards({user("nan"): 1.0}, isolate=False)
    [steps] = r.scores(["ab"], [{}])[user("nan")]
    assert steps[0].score is None and "non-finite" in steps[0].reason and steps[1] == Step(2, 1.0, "")
    assert r.nonfinite[user("nan")] == 1 and r.errors[user("nan")] == 0
    assert r(["ab"], [{}]) == ([[(2, 1.0)]], {user("nan"): [1.0]})  # the unscored step is dropped


def test_weighted_step_rewards_isolated_worker_and_timeout(user):
    r = WeightedStepRewards({user("words"): 1.0, user("sleeps"): 1.0}, split=r"\s+", timeout_s=2.0, on_error=None)
    steps, per = r(TEXTS, [{}, {}])
    assert r.errors == {user("words"): 0, user("sleeps"): 1}
    assert steps == [[(3, 1.0), (9, 0.0)], [(6, 1.0), (10, 0.0)]] and per[user("sleeps")] == [None, None]


def test_builtin_step_reward_through_the_combiner():
    r = WeightedStepRewards({"column_steps": 1.0})
    texts = [completion(347, 85, "reflective"), "no working"]
    steps, per = r(texts, [{"question": "What is 347+85?"}, {"question": "What is 347+85?"}])
    assert [s for _, s in steps[0]] == [1.0, 0.0, 1.0, 0.0, 1.0] and steps[1] == []
    assert per == {"column_steps": [0.6, None]}


# ---- start-up checks -----------------------------------------------------------------------

def test_step_reward_marks():
    assert is_step_reward(column_steps)
    assert not any(is_step_reward(f) for n, f in REWARDS.items() if n != "column_steps" and n != "process_model")


def test_step_reward_problems_say_what_to_change(user):
    assert step_reward_problems({"column_steps": 1.0}, {}, "") == []
    assert step_reward_problems({"column_steps": 1.0, user("words"): 0.5}, {}, r"\n\n") == []
    [p] = step_reward_problems({"colum_steps": 1.0}, {}, "")
    assert "unknown reward 'colum_steps'" in p and "did you mean 'column_steps'" in p
    [p] = step_reward_problems({"accuracy": 1.0}, {}, "")
    assert "outcome reward" in p and "rewards.weights" in p
    [p] = step_reward_problems({"column_steps": 1.0}, {}, "(")
    assert "not a valid regular expression" in p
    [p] = step_reward_problems({"column_steps": 1.0}, {}, r"\s*")
    assert "matches the empty string" in p
    [p] = step_reward_problems({"column_steps": 1.0, user("words"): 1.0}, {}, "")
    assert "2 step rewards" in p and "rewards.step_split" in p
    [p] = step_reward_problems({"column_steps": 1.0}, {"column_steps": {"strict": True}}, "")
    assert "rewards.params.column_steps.strict is not a setting" in p
    [p] = step_reward_problems({"column_steps": math.nan}, {}, "")
    assert "finite number" in p
    [p] = outcome_reward_problems({"accuracy": 1.0, "column_steps": 1.0})
    assert "'column_steps', a step reward" in p and "rewards.step_weights" in p
    with pytest.raises(ValueError, match="not a step reward.*step_reward decorator"):
        WeightedStepRewards({user("plain"): 1.0})


# ---- thinkrl score -------------------------------------------------------------------------

def test_score_command_with_step_rewards(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    rows = [{"prompt": "What is 347+85?", "answer": "432", "completion": completion(347, 85, "reflective")},
            {"prompt": "What is 95+7?", "answer": "102", "completion": completion(95, 7, "buggy")},
            {"prompt": "What is 95+7?", "answer": "102", "completion": "no idea"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert main(["score", "--rewards", "accuracy,column_steps", "--data", str(data), "--out", str(out)]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["rewards"]["accuracy"] for g in got] == [1.0, 0.0, 0.0]
    first = got[0]["steps"]["column_steps"]
    assert [s["score"] for s in first] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert [s["text"] for s in first] == ["<think>7+5=12", "4+8=12", "wait carry 4+8+1=13", "3+0=3",
                                          "wait carry 3+0+1=4"]
    assert first[1]["reason"] == "column 2: 4+8=12 forgets the carry"
    assert [s["score"] for s in got[1]["steps"]["column_steps"]] == [1.0, 0.0] and got[2]["steps"]["column_steps"] == []
    printed = capsys.readouterr().out
    line = next(l for l in printed.splitlines() if l.startswith("column_steps"))
    assert line.split()[1:4] == ["7", "0.5714", "3"] and line.split()[4] == "1"  # 7 steps, 4/7 right, 3 zeros, 1 none

    assert main(["score", "--rewards", "column_steps", "--data", str(data), "--out", str(out),
                 "--step-split", r"\s+"]) == 0
    spans = json.loads(out.read_text().splitlines()[0])["steps"]["column_steps"]
    assert [s["text"] for s in spans] == rows[0]["completion"].split()
    assert [s["end"] for s in spans] == [e for _, e in split_steps(rows[0]["completion"], r"\s+")]
    capsys.readouterr()
    assert main(["score", "--rewards", "column_steps", "--data", str(data), "--out", str(out),
                 "--step-split", "("]) == 2
    assert "--step-split '(' is not a valid regular expression" in capsys.readouterr().err
    assert main(["score", "--rewards", "format", "--data", str(data), "--out", str(out), "--step-split", "x"]) == 2
    assert "for step rewards" in capsys.readouterr().err


def test_outcome_reward_checks_let_step_rewards_have_settings():
    from types import SimpleNamespace

    from thinkrl.rewards.settings import reward_problems

    rw = SimpleNamespace(weights={"accuracy": 1.0}, by_type={}, timeout_s=60.0, params={"column_steps": {}},
                         step_weights={"column_steps": 1.0})
    assert reward_problems(rw, 100) == []  # settings of a step reward are checked by step_reward_problems
    rw.step_weights = {}
    [p] = reward_problems(rw, 100)
    assert "rewards.params.column_steps sets a reward that is not in" in p
