"""Format, language-consistency, length and repetition rewards against hand-computed values
(formulas transcribed here from the papers, independently of the code under test)."""

import math
import re

import pytest

from thinkrl.rewards.base import ExplainedReward
from thinkrl.rewards.format import format_lenient_reward, format_reward, tag_count_reward
from thinkrl.rewards.language import chain_of_thought, language_consistency_reward, words
from thinkrl.rewards.length import cosine_length_reward, overlong_penalty_reward
from thinkrl.rewards.repetition import repetition_penalty_reward

FULL = " <think>7+5=12</think> <answer>12</answer>"

# ---------------------------------------------------------------- format

# the strict reward as it was before it gave reasons, transcribed to check it is unchanged
_OLD_STRICT = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)


def old_format_reward(completions):
    out = []
    for c in completions:
        m = _OLD_STRICT.fullmatch(c)
        ok = (m is not None and m.group("answer").strip() != ""
              and all(c.count(t) == 1 for t in ("<think>", "</think>", "<answer>", "</answer>")))
        out.append(1.0 if ok else 0.0)
    return out


HOSTILE = [
    FULL, "", " ", "<think>a</think><answer>1</answer>", "<think></think><answer>12</answer>",
    "<think>\nmulti\nline\n</think>\n\n<answer>\n12\n</answer>\n", " 7+5=12 <answer>12</answer>",
    " <think>7+5=12</think> 12", "<think>a</think><answer>1</answer><answer>2</answer>",
    "<think>a</think><answer>1</answer> and more", "<think>a</think> between <answer>1</answer>",
    "preamble <think>a</think><answer>1</answer>", "<think>a</think><answer> </answer>",
    "<think>a<think>b</think><answer>1</answer>", "<think>a</think><think>b</think><answer>1</answer>",
    "<answer>1</answer><think>a</think>", "<think>a</think><answer>1", "</think><think>a<answer>1</answer>",
    "<think>a</answer><answer>1</think>", "<think>a</think><answer>1</answer></answer>",
    "<THINK>a</THINK><ANSWER>1</ANSWER>", "<think> a </think>\t<answer>\t1\t</answer>\t",
]


def test_strict_format_unchanged_and_explained():
    assert format_reward(HOSTILE) == old_format_reward(HOSTILE)
    assert sum(old_format_reward(HOSTILE)) == 5  # the corpus has both kinds
    scores = format_reward.scores(HOSTILE)
    assert [s.value for s in scores] == old_format_reward(HOSTILE)
    assert all(s.reason for s in scores if s.value == 0.0)
    assert all(s.reason == "" for s in scores if s.value == 1.0)


@pytest.mark.parametrize("completion, reason", [
    (" <think>7+5=12</think> 12", "missing <answer>, </answer>"),
    ("<think>a</think><answer>1</answer><answer>2</answer>", "repeated <answer> ×2, </answer> ×2"),
    ("<answer>1</answer><think>a</think>", "out of order"),
    ("<think>a</think><answer> </answer>", "empty answer"),
    ("preamble <think>a</think><answer>1</answer>", "text before <think>"),
    ("<think>a</think> between <answer>1</answer>", "between </think> and <answer>"),
    ("<think>a</think><answer>1</answer> and more", "after </answer>"),
])
def test_strict_format_says_why(completion, reason):
    [s] = format_reward.scores([completion])
    assert s.value == 0.0 and reason in s.reason


@pytest.mark.parametrize("completion, expected", [
    (FULL, 1.0),
    ("<think></think><answer>1</answer>", 1.0),  # empty reasoning is still the format
    ("Sure. <think>a</think> so: <answer>1</answer> done<|im_end|>", 1.0),  # text around: lenient
    ("<think>a</think>\n\nSummary: it is 1.\n<answer>1</answer>", 1.0),
    ("<think>a</think><answer> \n </answer>", 0.0),  # blank answer
    ("<answer>1</answer><think>a</think>", 0.0),  # out of order
    ("<think>a</think><answer>1</answer> <answer>2</answer>", 0.0),  # answer twice
    ("<think>a<think>b</think><answer>1</answer>", 0.0),  # think opened twice
    ("x </think> <answer>1</answer>", 0.0),  # each tag still exactly once
    ("<think>a</think> 1", 0.0),
    ("<think>a<answer>1</answer></think>", 0.0),  # the answer inside the reasoning
    ("", 0.0),
])
def test_lenient_format(completion, expected):
    [s] = format_lenient_reward.scores([completion])
    assert s.value == expected
    assert bool(s.reason) == (expected == 0.0)


def test_lenient_accepts_what_strict_accepts():
    for c in HOSTILE:
        if format_reward([c]) == [1.0]:
            assert format_lenient_reward([c]) == [1.0], c


@pytest.mark.parametrize("completion, expected", [
    (FULL, 1.0),
    ("pre <think>a</think> mid <answer>1</answer> post", 1.0),
    ("x </think> <answer>1</answer>", 0.75),  # <think> left in the prompt
    ("<think>a</think> 1", 0.5),
    ("<answer>1</answer> <think>a</think>", 0.5),  # think block in order, answer tags before it
    ("<think>a</think><answer>1</answer><answer>2</answer>", 0.5),  # answer tags twice
    ("<think>a</think><think>b</think><answer>1</answer>", 0.5),  # think tags twice
    ("</think> <think> <answer>1</answer>", 0.75),  # </think> before <think>
    ("</answer><answer><think>a</think>", 0.5),
    ("<think>a", 0.25),
    ("no tags at all", 0.0),
    ("", 0.0),
])
def test_tag_count(completion, expected):
    [s] = tag_count_reward.scores([completion])
    assert s.value == expected
    assert bool(s.reason) == (expected < 1.0)


# ---------------------------------------------------------------- language consistency

# 首 先 然 后 答 案: 6 Han words; compute, check, the: 3 Latin words; 3 + 4 = 7，。 neutral
MIXED = "<think>首先 compute 3 + 4 = 7，然后 check the 答案。</think><answer>7</answer>"


@pytest.mark.parametrize("completion, lang, expected", [
    (MIXED, "en", 3 / 9),
    (MIXED, "zh", 6 / 9),
    # Let, x, be, five: Latin; то, есть: Cyrillic, never the target
    ("<think>Let x be 5, то есть five.</think>", "en", 4 / 6),
    ("<think>Let x be 5, то есть five.</think>", "zh", 0.0),
    ("<think>我们来算一算。</think><answer>5</answer>", "zh", 1.0),
    ("<think>我们来算一算。</think><answer>5</answer>", "en", 0.0),
    ("<think>First add the tens, then the ones.</think><answer>5</answer>", "en", 1.0),
    ("<think>First add the tens, then the ones.</think><answer>5</answer>", "zh", 0.0),
    # only the reasoning counts: the English answer is not looked at
    ("<think>思考</think><answer>The answer is five</answer>", "zh", 1.0),
    # no think tags: the whole completion (hello; 世 界)
    ("hello 世界", "en", 1 / 3),
    # LaTeX commands and a lone Greek letter are math symbols: 所 以 是 only
    ("<think>所以 \\frac{1}{2} 是 π</think>", "zh", 1.0),
    # Greek prose is another language: Latin x; Greek αβγ
    ("<think>x αβγ</think>", "en", 1 / 2),
    # <think> never closed: everything after it (只; think)
    ("<think>只 think", "zh", 1 / 2),
    # </think> without <think> (opening tag in the prompt): everything before it (推 理; step)
    ("推理 step</think><answer>english words here</answer>", "zh", 2 / 3),
    # two think blocks, joined (a, b, c Latin; 中 Han)
    ("<think>a b</think><answer>1</answer><think>c 中</think>", "en", 3 / 4),
    # an apostrophe inside a word does not split it; accents stay in the word
    ("<think>don't café 你</think>", "en", 2 / 3),
])
def test_language_share(completion, lang, expected):
    [s] = language_consistency_reward.scores([completion], lang=lang)
    assert s.value == pytest.approx(expected)
    assert bool(s.reason) == (expected < 1.0)


def test_mixed_text_word_count_by_hand():
    assert [w for w, _ in words(chain_of_thought(MIXED))] == ["首", "先", "compute", "然", "后", "check", "the", "答", "案"]
    [s] = language_consistency_reward.scores([MIXED], lang="zh")
    assert "3 of 9 words not in zh" in s.reason and "'compute'" in s.reason


@pytest.mark.parametrize("completion", [
    "<think>1 + 2 = 3; 3 × 4 = 12。</think><answer>12</answer>",  # numbers and symbols only
    "<think></think><answer>five</answer>",  # empty reasoning (the answer is not counted)
    "",
    "  ...  ",
    "<think>\\frac{1}{2} + π = ?</think>",
])
def test_no_words_is_not_applicable(completion):
    [s] = language_consistency_reward.scores([completion], lang="en")
    assert s.value is None and "no words" in s.reason


def test_language_per_row_target_and_unsupported():
    assert language_consistency_reward([MIXED, MIXED], lang=["en", "zh"], prompts=["q", "q"], level=[1, 2]) \
        == pytest.approx([1 / 3, 2 / 3])
    with pytest.raises(ValueError, match="supported: en, zh"):
        language_consistency_reward([MIXED], lang="fr")
    with pytest.raises(ValueError, match="target languages"):
        language_consistency_reward([MIXED], lang=["en", "zh"])


# ---------------------------------------------------------------- DAPO overlong penalty


def dapo(n, L_max, L_cache):
    """DAPO eq. 13, transcribed."""
    if n <= L_max - L_cache:
        return 0.0
    if n <= L_max:
        return ((L_max - L_cache) - n) / L_cache
    return -1.0


@pytest.mark.parametrize("n, expected", [
    (0, 0.0), (10, 0.0), (15, 0.0),  # up to and exactly at L_max − L_cache = 15
    (16, -0.2), (18, -0.6), (19, -0.8),
    (20, -1.0),  # exactly at L_max
    (21, -1.0), (1000, -1.0),  # over
])
def test_overlong_penalty_boundaries(n, expected):
    [s] = overlong_penalty_reward.scores(["ignored text"], max_length=20, cache_length=5, completion_lengths=[n])
    assert s.value == pytest.approx(expected)
    assert s.value == pytest.approx(dapo(n, 20, 5))
    assert bool(s.reason) == (expected < 0)
    assert ("over the limit" in s.reason) == (n > 20)  # exactly L_max is the ramp's end, not over


def test_overlong_penalty_defaults_are_dapo():
    lengths = [16384, 16385, 18432, 20480, 20481]
    got = overlong_penalty_reward(["x"] * 5, completion_lengths=lengths)
    assert got == pytest.approx([0.0, -1 / 4096, -0.5, -1.0, -1.0])
    assert got == pytest.approx([dapo(n, 20480, 4096) for n in lengths])


def test_overlong_penalty_falls_back_to_words():
    comps = ["", "one two", "one two  three", "one\ntwo three four", "a b c d e"]  # 0, 2, 3, 4, 5 words
    assert overlong_penalty_reward(comps, max_length=4, cache_length=2, answer=["1"] * 5) \
        == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])
    [s] = overlong_penalty_reward.scores(["one two three"], max_length=4, cache_length=2)
    assert "words" in s.reason


def test_overlong_penalty_settings_checked():
    assert overlong_penalty_reward(["x", "x"], max_length=8, cache_length=0, completion_lengths=[8, 9]) == [0.0, -1.0]
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty_reward(["x"], max_length=4, cache_length=5)
    with pytest.raises(ValueError, match="completion lengths"):
        overlong_penalty_reward(["x", "y"], completion_lengths=[1])


# ---------------------------------------------------------------- cosine length reward


def cos_fn(t, T, eta_min, eta_max):
    """Yeo et al.'s CosFn: η_min + ½(η_max − η_min)(1 + cos(tπ/T)), transcribed."""
    return eta_min + 0.5 * (eta_max - eta_min) * (1 + math.cos(t * math.pi / T))


RIGHT, WRONG, NONE = "<answer>4</answer>", "<answer>5</answer>", "I give up"


@pytest.mark.parametrize("completion, n, expected", [
    (RIGHT, 0, 2.0), (RIGHT, 50, 1.5), (RIGHT, 100, 1.0),  # correct: 2 → 1, shorter is better
    (RIGHT, 25, 1 + 0.5 * (1 + math.sqrt(0.5))),
    (WRONG, 0, -10.0), (WRONG, 50, -5.0), (WRONG, 100, 0.0),  # wrong: −10 → 0, longer is better
    (WRONG, 75, -10 * 0.5 * (1 - math.sqrt(0.5))),
    (NONE, 50, -5.0),  # no final answer is wrong
    (RIGHT, 101, -10.0), (WRONG, 101, -10.0), (RIGHT, 5000, -10.0),  # over L_max
])
def test_cosine_length_reward(completion, n, expected):
    [s] = cosine_length_reward.scores([completion], answer=["4"], max_length=100, completion_lengths=[n])
    assert s.value == pytest.approx(expected)
    if n <= 100:
        ok = completion == RIGHT
        assert s.value == pytest.approx(cos_fn(n, 100, 1.0, 2.0) if ok else cos_fn(n, 100, 0.0, -10.0))
    assert bool(s.reason) == (expected != 2.0)


def test_cosine_length_reward_settings_and_none():
    comps = [RIGHT, WRONG, RIGHT + " padding words here", RIGHT]
    got = cosine_length_reward(comps, answer=["4", "4", "4", "\\frac{"], max_length=4, r_c_0=1.0, r_c_L=0.5,
                               r_w_0=-1.0, r_w_L=-0.5, r_exceed=-3.0, prompts=["q"] * 4)
    # lengths in words: 1, 1, 4, 1; the last reference cannot be parsed
    assert got == pytest.approx([cos_fn(1, 4, 0.5, 1.0), cos_fn(1, 4, -0.5, -1.0), 0.5, None])
    assert cosine_length_reward([RIGHT + " a b c d"], answer=["4"], max_length=4, r_exceed=-3.0) == [-3.0]
    with pytest.raises(ValueError, match="answer"):
        cosine_length_reward([RIGHT])


def test_cosine_answer_source_is_passed_on():
    boxed = "so \\boxed{4}"
    assert cosine_length_reward([boxed], answer=["4"], max_length=10, source="boxed") == [pytest.approx(cos_fn(2, 10, 1, 2))]
    assert cosine_length_reward([boxed], answer=["4"], max_length=10, source="answer") == [pytest.approx(cos_fn(2, 10, 0, -10))]


# ---------------------------------------------------------------- repetition penalty


def rep(words_, n, p):
    """max_penalty × (1 − distinct n-grams / all n-grams), transcribed; 0 below n words."""
    grams = [tuple(words_[i:i + n]) for i in range(len(words_) - n + 1)]
    return 0.0 if not grams else p * (1 - len(set(grams)) / len(grams))


@pytest.mark.parametrize("completion, kwargs, expected", [
    ("the cat sat on the mat", {}, 0.0),
    ("a b c a b c a b c", {}, -4 / 7),  # 7 trigrams, 3 distinct
    ("a b c a b c a b c", {"max_penalty": -0.5}, -2 / 7),
    ("go go go go", {"ngram": 1}, -0.75),  # 4 unigrams, 1 distinct
    ("go go go go", {"ngram": 2}, -2 / 3),  # 3 bigrams, 1 distinct
    ("我爱我爱我爱", {}, -0.5),  # each Han character a word: 4 trigrams, 2 distinct
    ("a b", {}, 0.0),  # fewer words than n
    ("", {}, 0.0),
    ("A b c a b c", {}, 0.0),  # case matters
])
def test_repetition_penalty(completion, kwargs, expected):
    [s] = repetition_penalty_reward.scores([completion], **kwargs)
    assert s.value == pytest.approx(expected)
    if not any("\u4e00" <= ch <= "\u9fff" for ch in completion):
        assert s.value == pytest.approx(rep(completion.split(), kwargs.get("ngram", 3), kwargs.get("max_penalty", -1.0)))
    assert bool(s.reason) == (expected < 0)


def test_repetition_reason_and_settings():
    [s] = repetition_penalty_reward.scores(["a b c a b c a b c"])
    assert "4 of 7 3-grams repeat" in s.reason and "'a b c' ×3" in s.reason
    with pytest.raises(ValueError):
        repetition_penalty_reward(["x"], ngram=0)
    with pytest.raises(ValueError):
        repetition_penalty_reward(["x"], max_penalty=1.0)


# ---------------------------------------------------------------- the contract


@pytest.mark.parametrize("reward", [format_reward, format_lenient_reward, tag_count_reward,
                                    language_consistency_reward, overlong_penalty_reward,
                                    repetition_penalty_reward])
def test_rewards_follow_the_contract(reward):
    comps = [FULL, "", "x x x x x"]
    assert isinstance(reward, ExplainedReward)
    got = reward(comps, prompts=["q"] * 3, answer=["12"] * 3, level=[1, 2, 3], completion_lengths=[3, 0, 5])
    assert len(got) == 3 and all(v is None or isinstance(v, float) for v in got)
    assert reward([]) == []
