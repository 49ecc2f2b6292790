"""pass@k, pass@1, majority vote and cons@k, checked against hand computation, brute-force
enumeration and real sampled answers (../shared/data/labeled_responses)."""

import itertools
import json
import math
from fractions import Fraction

import pytest

import thinkrl.rewards.math as rmath
from thinkrl.evaluation.estimators import (cons_at_k, default_ks, equivalence_classes, majority_vote,
                                           math_equivalence_classes, math_majority_vote, mean_and_se, pass_at_1,
                                           pass_at_k, pass_at_k_table, vote)
from thinkrl.rewards.math import is_equivalent

from .shared_data import DATA, needs_data
T, F = True, False


# ---------------------------------------------------------------- pass@k


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 0, 1, 0.0),
    (10, 3, 1, 0.3),                    # pass@1 is c/n
    (4, 2, 2, 1 - 1 / 6),               # 1 - C(2,2)/C(4,2)
    (10, 1, 5, 0.5),                    # 1 - C(9,5)/C(10,5) = 1 - 126/252
    (5, 3, 3, 1.0),                     # n - c = 2 < k: every 3-subset holds a correct one
    (5, 5, 5, 1.0),
    (8, 2, 3, 1 - 20 / 56),             # 1 - C(6,3)/C(8,3)
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_brute_force_over_all_k_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_where_the_binomials_are_huge():
    # C(200, 100) ~ 9e58 would overflow a float division; the product form needs no binomial
    n, c, k = 200, 50, 100
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001, rel=1e-12)


@pytest.mark.parametrize("n, c, k", [(5, 2, 0), (5, 2, 6), (5, 6, 1), (5, -1, 1), (0, 0, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_default_ks_are_powers_of_two_and_the_sample_count():
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(6) == [1, 2, 4, 6]
    assert default_ks(1) == [1]
    assert default_ks(64) == [1, 2, 4, 8, 16, 32, 64]


def test_pass_at_k_table_by_hand():
    correct = [[T, F, F, F], [T, T, T, T], [F, F, F, F]]
    table = pass_at_k_table(correct)
    assert list(table) == [1, 2, 4]
    # pass@1 per question 1/4, 1, 0
    m, se = table[1]
    assert m == pytest.approx(5 / 12)
    dev = [1 / 4 - 5 / 12, 1 - 5 / 12, 0 - 5 / 12]
    assert se == pytest.approx(math.sqrt(sum(d * d for d in dev) / 2 / 3))
    # pass@2 per question: 1 - C(3,2)/C(4,2) = 1/2, 1, 0 -> mean 1/2, sample std 1/2
    assert table[2] == pytest.approx((0.5, 0.5 / math.sqrt(3)))
    # pass@4 per question: 1, 1, 0 -> mean 2/3, sample variance 1/3, SE sqrt(1/3)/sqrt(3) = 1/3
    assert table[4] == pytest.approx((2 / 3, 1 / 3))
    assert table[1] == pytest.approx(pass_at_1(correct))


def test_pass_at_k_table_with_chosen_ks_and_uneven_sample_counts():
    table = pass_at_k_table([[T, F, F], [F, F, T, T, F]], ks=[3])
    assert table[3][0] == pytest.approx((1.0 + (1 - 1 / 10)) / 2)  # 1 - C(3,3)/C(5,3) = 9/10
    with pytest.raises(ValueError, match="fewest samples"):
        pass_at_k_table([[T, F, F], [F, F, T, T, F]], ks=[4])
    with pytest.raises(ValueError):
        pass_at_k_table([])
    with pytest.raises(ValueError, match="question 1 has no samples"):
        pass_at_k_table([[T], []])


# ---------------------------------------------------------------- pass@1 and its standard error


def test_pass_at_1_and_standard_error_by_hand():
    m, se = pass_at_1([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    # per question 1/2, 1, 0, 1/2: mean 1/2, sample variance (0 + 1/4 + 1/4 + 0)/3 = 1/6
    assert m == pytest.approx(0.5)
    assert se == pytest.approx(math.sqrt(1 / 6 / 4))


def test_pass_at_1_standard_error_is_over_questions_not_samples():
    # two questions, one always right and one always wrong: the spread is between questions
    # (sample std 0.707 / sqrt 2 = 0.5), not the 0.29 that 4 independent samples would give
    assert pass_at_1([[T, T], [F, F]]) == pytest.approx((0.5, 0.5))
    # every question half right: no spread between questions, whatever the samples did
    assert pass_at_1([[T, F], [F, T], [T, F]]) == pytest.approx((0.5, 0.0))


def test_one_question_has_zero_standard_error():
    assert pass_at_1([[T, F, F, F]]) == (0.25, 0.0)
    assert mean_and_se([3.0]) == (3.0, 0.0)


def test_correctness_must_be_true_or_false():
    with pytest.raises(ValueError, match="question 0"):
        pass_at_1([[T, None]])
    with pytest.raises(ValueError, match="question 1"):
        pass_at_1([[T], [0.5]])


# ---------------------------------------------------------------- majority vote


def test_majority_vote_by_exact_string_after_whitespace_normalisation():
    assert majority_vote(["2", " 2 ", "3", "1  +  1", "1 + 1", "1 +\n1"]) == ("1  +  1", 3)
    assert majority_vote(["2", " 2 ", "3"]) == ("2", 2)


def test_equivalent_answers_written_differently_outvote_a_repeated_one():
    answers = ["2", "1/2", "\\frac{1}{2}", "2", "0.5"]
    assert majority_vote(answers) == ("2", 2)  # by string, "2" wins
    assert math_majority_vote(answers, workers=0) == ("1/2", 3)  # by value, one half wins
    assert majority_vote(answers, equivalent=is_equivalent) == ("1/2", 3)


def test_none_answers_never_vote():
    assert majority_vote([None, None, None]) == (None, 0)
    assert majority_vote([]) == (None, 0)
    assert majority_vote([None, "7", None, "  ", ""]) == ("7", 1)
    assert math_majority_vote([None, None], workers=0) == (None, 0)
    assert math_equivalence_classes([None, "", "3"], workers=0) == [None, None, 0]


def test_ties_go_to_the_class_seen_first_both_ways():
    assert majority_vote(["a", "b", "b", "a"]) == ("a", 2)
    assert majority_vote(["b", "a", "a", "b"]) == ("b", 2)
    # the earliest first member wins, even when the other class reached the tie first
    assert majority_vote(["a", "b", "b", "c", "a"]) == ("a", 2)
    # with equivalence: {0.5, 1/2} and {2} tie at two votes each
    assert math_majority_vote(["0.5", "2", "1/2", "2"], workers=0) == ("0.5", 2)
    assert math_majority_vote(["2", "0.5", "1/2", "2"], workers=0) == ("2", 2)


def test_the_winner_is_its_class_first_member_as_written():
    assert math_majority_vote(["7", "\\frac{1}{2}", "0.5", "1/2"], workers=0) == ("\\frac{1}{2}", 3)


def test_custom_equivalence_is_asked_against_class_representatives():
    calls = []

    def same_parity(rep, answer):
        calls.append((rep, answer))
        return int(rep) % 2 == int(answer) % 2

    assert equivalence_classes(["1", "2", "3", "4", "3"], same_parity) == [0, 1, 0, 1, 0]
    # "3" twice is one string: asked once; each new string is asked only against representatives
    assert calls == [("1", "2"), ("1", "3"), ("1", "4"), ("2", "4")]


def test_vote_checks_its_inputs_line_up():
    with pytest.raises(ValueError):
        vote(["a", "b"], [0])
    assert vote(["x", "y", "z"], [5, 3, 3]) == ("y", 2)  # any class ids, not only 0..n


def test_cons_at_k_counts_no_winner_as_wrong():
    m, se = cons_at_k([True, False, None, True])
    # 1, 0, 0, 1: mean 1/2, sample variance 1/3
    assert m == pytest.approx(0.5)
    assert se == pytest.approx(math.sqrt(1 / 3 / 4))
    with pytest.raises(ValueError):
        cons_at_k([])


# ---------------------------------------------------------------- equivalence by the math verifier


def test_math_classes_compare_plain_numbers_exactly_and_the_rest_by_math_verify():
    answers = ["1,000", "1000", "1000.0", "\\frac{2000}{2}", "999", "x^2", "x^{2}", "hello", "hello", "world"]
    assert math_equivalence_classes(answers, workers=0) == [0, 0, 0, 0, 1, 2, 2, 3, 3, 4]


def test_math_classes_batch_the_verifier_per_class(monkeypatch):
    batches = []
    real = rmath._judge_all

    def spy(pairs, workers, timeout_s):
        batches.append(list(pairs))
        return real(pairs, workers, timeout_s)

    monkeypatch.setattr(rmath, "_judge_all", spy)
    answers = ["1/2", "\\frac{1}{2}", "0.5", "3", "\\frac{6}{2}"] * 12  # 60 answers, 5 strings, 2 values
    classes = math_equivalence_classes(answers, workers=0)
    assert classes == [0, 0, 0, 1, 1] * 12
    # one batch per class, never a pair of equal strings or of two plain numbers
    assert len(batches) == 2
    assert batches[0] == [("1/2", "\\frac{1}{2}"), ("1/2", "0.5"), ("1/2", "3"), ("1/2", "\\frac{6}{2}")]
    assert batches[1] == [("3", "\\frac{6}{2}")]


def test_math_classes_in_the_worker_pool():
    assert math_equivalence_classes(["0.25", "\\frac14", "1/4", "4"], workers=1) == [0, 0, 0, 1]


@needs_data
def test_math_classes_agree_with_the_verifier_on_real_sampled_answers():
    """Real answers of Qwen2.5-7B to MATH problems (15 each): every class is uniformly right or
    wrong against the ground truth by `is_equivalent`, the answers the original authors'
    grader labelled correct share one class, and the vote is the class with most members."""
    path = DATA / "labeled_responses" / "example_responses_n15_qwen2.5_7b_math_process.jsonl"
    for line in path.read_text().splitlines():
        row = json.loads(line)
        answers = [o["response_answer"] for o in row["outputs"]]
        classes = math_equivalence_classes(answers, workers=0)
        right = [is_equivalent(row["ground_truth"], a) for a in answers]
        for cls in set(classes):
            assert len({r for r, c in zip(right, classes) if c == cls}) == 1, (row["ground_truth"], answers)
        labelled = {c for c, o in zip(classes, row["outputs"]) if o["label"] is True}
        assert len(labelled) <= 1
        winner, votes = math_majority_vote(answers, workers=0)
        assert votes == max(classes.count(c) for c in set(classes))
        assert classes[answers.index(winner)] == max(set(classes), key=lambda c: (classes.count(c), -c))
