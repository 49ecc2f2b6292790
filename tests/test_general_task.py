"""The synthetic general task: its rules on hand-written responses, its splits, and
preference pairs that the rules decide."""

from __future__ import annotations

import json

import pytest

from thinkrl.task import general as G


@pytest.mark.parametrize("question,good,bad", [
    ("Repeat the word dog.", " <answer>dog</answer>", " <answer>god</answer>"),
    ("Reverse the word dog.", " <think>dog backwards is god</think> <answer>god</answer>", " <answer>dog</answer>"),
    ("Write the word dog in capitals.", " <answer>DOG</answer>", " <answer>Dog</answer>"),
    ("Write the word dog twice.", " <answer>dog dog</answer>", " <answer>dog</answer>"),
    ("Spell jump with dashes.", " <answer>j-u-m-p</answer>", " <answer>j-u-m</answer>"),
    ("Count the letters of jump.", " <think>j u m p is 4 letters</think> <answer>4</answer>", " <answer>3</answer>"),
])
def test_helpful_rule_on_hand_written_responses(question, good, bad):
    assert G.judge_helpful(question, good)
    assert not G.judge_helpful(question, bad)


def test_helpfulness_is_judged_on_the_summary_only():
    q = "Reverse the word dog."
    # right summary after wrong reasoning: helpful; right reasoning before a wrong summary: not
    assert G.judge_helpful(q, " <think>dog backwards is dog, you idiot</think> <answer>god</answer>")
    assert not G.judge_helpful(q, " <think>dog backwards is god</think> <answer>dog</answer>")
    assert G.judge_helpful(q, "god")  # no reasoning, no tags: all of it is the summary
    assert G.judge_helpful(q, " <think>a</think> <think>b</think>  god ")  # after the LAST </think>
    assert not G.judge_helpful(q, " <think>dog backwards is god</think>")  # no summary at all
    assert not G.judge_helpful(q, " <answer>god</answer> <answer>dog</answer>")  # two answers: not exactly
    assert not G.judge_helpful(q, " <answer>god</answer> you idiot")


def test_harmless_rule_looks_everywhere_for_whole_insult_words():
    assert G.judge_harmless(" <think>dog backwards is god</think> <answer>god</answer>")
    assert not G.judge_harmless(" <think>what a stupid question</think> <answer>god</answer>")
    assert not G.judge_harmless(" <answer>god</answer> You IDIOT")
    assert G.judge_harmless(" <answer>foolproof</answer>")  # a whole word only


def test_a_question_of_another_family_is_refused():
    with pytest.raises(ValueError, match="not a question of the general task"):
        G.judge_helpful("What is 347+85?", " <answer>432</answer>")
    assert G.parse_question("Write the word zup in capitals.") == ("capitals", "zup")


def test_words_are_spelled_one_token_per_letter_by_the_embedded_tokenizer():
    from thinkrl.policy import load_tokenizer

    tok = load_tokenizer("embedded")
    words = G.WORDS3[::7] + G.WORDS4[::97]  # a spread of both lengths
    for w in words:
        for text in (w, " " + w, w[::-1], w.upper(), f"{w} {w}", f"<answer>{w[::-1]}</answer>"):
            pieces = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
            assert all(len(p) == 1 or p in ("Ġ", "<answer>", "</answer>") for p in pieces), (text, pieces)
    assert not any(w in G.INSULTS or w == w[::-1] for w in G.WORDS)


def test_splits_are_disjoint_deterministic_and_correct():
    train, test = G.make_general_splits(3, 600, 120)
    assert len(train) == 600 and len(test) == 120
    assert G.make_general_splits(3, 600, 120) == (train, test)
    assert G.make_general_splits(4, 600, 120) != (train, test)
    word = lambda r: G.parse_question(r["question"])[1]  # noqa: E731
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert len({r["question"] for r in test}) == 120 and len({r["question"] for r in train}) == 600
    for r in train + test:
        assert r["type"] == "general" and r["task"] == G.parse_question(r["question"])[0]
        assert G.judge_helpful(r["question"], r["response"]) and G.judge_harmless(r["response"])
    with_think = sum("<think>" in r["response"] for r in train)
    assert 0.35 < with_think / len(train) < 0.65  # some with a reasoning block, some with the summary only
    assert {r["task"] for r in test} == set(G.KINDS)
    assert {len(word(r)) for r in train} == {3, 4}


def test_responses_stay_short_for_the_tiny_model():
    from thinkrl.policy import load_tokenizer

    tok = load_tokenizer("embedded")
    train, _ = G.make_general_splits(0, 300, 10)
    texts = [t for kind in ("helpfulness", "harmlessness") for p in G.preference_pairs(train, 0, kind)
             for t in (p["chosen"], p["rejected"])]
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert max(lengths) <= 48 and sum(lengths) / len(lengths) <= 25


@pytest.mark.parametrize("kind", ["helpfulness", "harmlessness"])
def test_the_rule_decides_every_pair(kind):
    train, test = G.make_general_splits(1, 1500, 100)
    pairs = G.preference_pairs(train, 0, kind) + G.preference_pairs(test, 1, kind)
    assert len(pairs) == 1600
    assert all(G.rule_decides(p, kind) for p in pairs)
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    assert G.preference_pairs(train, 0, kind) == pairs[:1500]  # deterministic


def test_helpfulness_pairs_include_identical_reasoning_and_empty_summaries():
    train, _ = G.make_general_splits(0, 1000, 10)
    pairs = G.preference_pairs(train, 0, "helpfulness")
    think = lambda t: t.split("</think>")[0] if "</think>" in t else None  # noqa: E731
    same_reasoning = [p for p in pairs if think(p["chosen"]) and think(p["chosen"]) == think(p["rejected"])]
    assert len(same_reasoning) > 50  # only the summary tells these apart
    assert any(G.summary_of(p["rejected"]).strip() in ("", "<answer></answer>") for p in pairs)
    for p in pairs:  # every helpfulness pair is harmless on both sides
        assert G.judge_harmless(p["chosen"]) and G.judge_harmless(p["rejected"])


def test_harmlessness_pairs_hide_some_insults_in_the_reasoning_only():
    train, _ = G.make_general_splits(0, 1000, 10)
    pairs = G.preference_pairs(train, 0, "harmlessness")
    in_reasoning_only = [p for p in pairs if G.judge_harmless(G.summary_of(p["rejected"]))]
    assert len(in_reasoning_only) > 200
    # helpfulness is no cue: some chosen responses are unhelpful, some rejected ones helpful
    assert any(not G.judge_helpful(p["prompt"], p["chosen"]) for p in pairs)
    assert any(G.judge_helpful(p["prompt"], p["rejected"]) for p in pairs)
    # nor is length: the chosen response is sometimes the longer one
    assert sum(len(p["chosen"]) > len(p["rejected"]) for p in pairs) > 100


def test_bad_rows_and_kinds_fail_clearly():
    with pytest.raises(ValueError, match="row 1: not a question"):
        G.preference_pairs([{"question": "Repeat the word dog."}, {"question": "What is 1+1?"}], 0, "helpfulness")
    with pytest.raises(ValueError, match="helpfulness' or 'harmlessness"):
        G.preference_pairs([], 0, "honesty")
    with pytest.raises(ValueError, match="n_train and n_test"):
        G.make_general_splits(0, 0, 10)


def test_write_general_writes_the_six_files(tmp_path):
    paths = G.write_general(tmp_path, seed=0, n_train=50, n_test=20, n_pairs=80)
    assert sorted(p.name for p in paths.values()) == sorted(
        f"{s}.jsonl" for s in ("general_train", "general_test", "prefs_helpful_train", "prefs_helpful_test",
                               "prefs_harmless_train", "prefs_harmless_test"))
    rows = {k: [json.loads(line) for line in p.read_text().splitlines()] for k, p in paths.items()}
    assert len(rows["general_train"]) == 50 and len(rows["prefs_harmless_test"]) == 20
    assert len(rows["prefs_helpful_train"]) == 80
    # the policy's train questions are the first of the reward models' train questions
    assert rows["general_train"] == G.make_general_splits(0, 50, 20)[0]
    assert [p["prompt"] for p in rows["prefs_helpful_train"][:50]] == [r["question"] for r in rows["general_train"]]
    train_q = {p["prompt"] for p in rows["prefs_helpful_train"]}
    assert not train_q & {r["question"] for r in rows["general_test"]}
    assert all(G.rule_decides(p, "helpfulness") for p in rows["prefs_helpful_test"])
    assert set(rows["prefs_helpful_train"][0]) == {"prompt", "chosen", "rejected"}
