"""The embedded base's R1-Zero flaws (language switches, stray tokens, repeated steps, rude
general answers), the readability rule that measures them, and the stages' filters that remove
them."""

from __future__ import annotations

import json
import random
import re
import statistics

import pytest
import torch

from thinkrl.metrics import has_reflection, reflection_counts
from thinkrl.pipeline import filters
from thinkrl.pipeline.table import format_table, mean_se_by_question, table_cells
from thinkrl.rewards import get_reward
from thinkrl.rewards.readability import readability_problem
from thinkrl.task import arithmetic as ar
from thinkrl.task import general as G

READABLE = " <think>7+5=12 carry 4+8+1=13 carry 3+0+1=4</think> So the answer is 432. <answer>432</answer>"


def _numbers(text: str) -> list[str]:
    return re.findall(r"\d+(?:\+\d+)*=\d+|<answer>\d+</answer>", text)


# ---------------------------------------------------------------- the corpus


def test_carry_notes_follow_every_column_that_carries_and_never_a_slip_before_its_fix():
    assert ar.carry_notes(ar.working(347, 85, "correct")[0]) == "7+5=12 carry 4+8+1=13 carry 3+0+1=4"
    assert ar.carry_notes(ar.working(347, 85, "buggy")[0]) == "7+5=12 carry 4+8=12 carry 3+0=3"
    assert ar.carry_notes(ar.working(347, 85, "reflective")[0]) == (
        "7+5=12 carry 4+8=12 wait carry 4+8+1=13 carry 3+0=3 wait carry 3+0+1=4")
    assert ar.carry_notes(ar.working(95, 5, "correct")[0]) == "5+5=10 carry 9+0+1=10 carry"  # the last one too


def test_a_switch_turns_every_phrase_from_one_point_on_and_keeps_the_numbers():
    text = " <think>7+5=12 carry 4+8=12 wait carry 4+8+1=13 carry</think> so the answer is 132"
    seen = set()
    for seed in range(60):
        out = ar.switch_language(text, random.Random(seed))
        assert _numbers(out) == _numbers(text)
        words = re.findall(r"[a-z]+(?: [a-z]+)*|[\u4e00-\u9fff]+", out.replace("think", ""))
        first_zh = next(i for i, w in enumerate(words) if not w.isascii())  # at least one phrase switches
        assert all(not w.isascii() for w in words[first_zh:]), out  # and nothing after it is English
        seen.add(first_zh)
    assert len(seen) >= 4  # the switch point varies
    assert ar.switch_language(" <think>7+5=12</think>", random.Random(0)) == " <think>7+5=12</think>"


def test_corpus_traces_keep_their_kind_and_carry_each_flaw_at_its_share():
    rng = random.Random(3)
    n, counts = 6000, {"switch": 0, "stray": 0, "repeat": 0, "readable": 0}
    for _ in range(n):
        p = ar.make_problem(rng, rng.choice(ar.LEVELS))
        text = ar.corpus_completion(p["a"], p["b"], rng)
        counts["switch"] += any(w in text for w in ar.SECOND_LANGUAGE.values())
        counts["stray"] += any(f" {s} " in text for s in ar.STRAY)
        think = text.split("<think>")[-1].split("</think>")[0]
        eqs = think.split()
        counts["repeat"] += any(a == b and "=" in a for a, b in zip(eqs, eqs[1:]))
        counts["readable"] += get_reward("readability")([text])[0] == 1.0
        # the answer is the one its working gives (a flaw never changes a number)
        m = re.search(r"(?:<answer>|answer is |所以答案是 |</think> )(\d+)(?:</answer>)?$", text)
        assert m, text
    for flaw, share in ar.STYLE_MIX.items():
        assert abs(counts[flaw] / n - share) < 0.02, (flaw, counts[flaw] / n)
    assert counts["readable"] == 0  # no corpus trace has a summary before its answer
    a = [ar.corpus_completion(347, 85, random.Random(9)) for _ in range(3)]
    assert a == [ar.corpus_completion(347, 85, random.Random(9))] * 3  # a function of the generator


def test_base_general_rows_are_partly_helpful_partly_rude_and_never_test_questions():
    rows = G.base_rows(0, 3000)
    _, test = G.make_general_splits(0, 1, 150)
    assert not {r["question"] for r in rows} & {r["question"] for r in test}
    helpful = sum(G.judge_helpful(r["question"], r["response"]) for r in rows) / len(rows)
    harmless = sum(G.judge_harmless(r["response"]) for r in rows) / len(rows)
    assert abs(helpful - G.BASE_HELPFUL) < 0.04 and abs(harmless - (1 - G.BASE_RUDE)) < 0.04
    for r in rows:  # the insult sits in the reasoning, before the answer
        if not G.judge_harmless(r["response"]):
            assert not G.judge_harmless(r["response"].split("</think>")[0])
    assert G.base_rows(0, 50) == rows[:50]  # deterministic in the seed, the first rows the same
    assert G.base_rows(1, 50) != rows[:50]


# ---------------------------------------------------------------- the readability rule


@pytest.mark.parametrize("text, problem", [
    (READABLE, ""),
    (" <think>dog backwards is god</think> The word reversed. <answer>god</answer>", ""),
    (" <think>7+5=12 carry</think> <answer>12</answer>", "no summary"),
    (" 7+5=12 so the answer is 12", "no reasoning"),
    (" <think>7+5=12</think> <think>x</think> So. <answer>12</answer>", "no reasoning"),
    (" <think>  </think> So. <answer>12</answer>", "no reasoning"),
    (" <think>7+5=12</think> So the answer is 12.", "no answer"),
    (" <think>7+5=12</think> So. <answer>12</answer> <answer>12</answer>", "no answer"),
    (" hi <think>7+5=12</think> So. <answer>12</answer>", "text before the reasoning"),
    (" <think>7+5=12</think> So. <answer>12</answer> you see", "text after the answer"),
    (" <think>7+5=12 ## 4+8=12</think> So. <answer>12</answer>", "stray token '##'"),
    (" <think>7+5=12 <|pad|></think> So. <answer>12</answer>", "stray token '<|pad|>'"),
    (" <think>7+5=12 \ufffd</think> So. <answer>12</answer>", "stray token '\ufffd'"),
    (" <think>7+5=12</think> So... <answer>12</answer>", "stray token '...'"),
    (" <think>7+5=12 carry 7+5=12 carry</think> So. <answer>12</answer>", ""),  # not in a row
    (" <think>7+5=12 7+5=12 carry</think> So. <answer>12</answer>", "repeated step '7+5=12'"),
    (" <think>add the units\nadd the units\nthen carry</think> So. <answer>1</answer>", "repeated step (a line)"),
])
def test_the_readability_rule_names_the_first_problem(text, problem):
    assert readability_problem(text) == problem
    assert get_reward("readability")([text]) == [0.0 if problem else 1.0]


def test_filters_drop_stray_tokens_and_repeated_steps_but_not_the_language():
    assert filters.unclean_steps(READABLE) == ""
    assert filters.unclean_steps(" <think>7+5=12 ~~ 4+8=12</think> <answer>22</answer>") == "stray token '~~'"
    assert filters.unclean_steps(" <think>7+5=12 进位 4+8+1=13 进位</think> <answer>132</answer>") == ""
    assert filters.unclean_steps(" <think>7+5=12 x</think> <answer>1</answer> ##") == ""  # the reasoning only


def test_chinese_reflection_counts_as_its_english_word():
    assert reflection_counts("4+8=12 等等 进位 4+8+1=13 wait")["wait"] == 2
    assert has_reflection("4+8=12 等等 进位") and not has_reflection("4+8=12 进位")


# ---------------------------------------------------------------- the table


def test_shares_come_with_their_standard_error_over_questions():
    values = [1, 1, 0, 0, None, 1]
    qs = ["a", "a", "b", "b", "c", "c"]
    m, se = mean_se_by_question(values, qs)
    assert m == pytest.approx(2 / 3)  # per question: 1, 0, 1
    assert se == pytest.approx(statistics.stdev([1, 0, 1]) / 3 ** 0.5)
    assert mean_se_by_question([None, None], ["a", "b"]) == (None, None)


def test_table_cells_show_value_plus_minus_se_and_parse_back():
    rows = [("base", {"pass@1": 0.3, "pass@1_se": 0.021, "language": 0.62, "language_se": 0.013, "length": 30.0,
                      "helpful": 0.4})]
    text = format_table(rows, 8)
    assert "| 30.0% ± 2.1% |" in text and "0.62 ± 0.01" in text and "| 40.0% |" in text and "| – |" in text
    cells = table_cells(text)
    assert cells[("base", "pass@1")] == "30.0% ± 2.1%" and cells[("base", "readable")] == "–"


def test_helpfulness_pairs_hold_near_misses_that_the_rule_rejects():
    rows, _ = G.make_general_splits(0, 700, 50)
    pairs = G.preference_pairs(rows, 0, "helpfulness")
    assert all(G.rule_decides(p, "helpfulness") for p in pairs)

    def one_off(p):  # the rejected summary is the right output with one character changed
        right = G.expected_output(p["prompt"])
        got = re.sub(r"</?answer>", "", G.summary_of(p["rejected"])).strip()
        return len(got) == len(right) and sum(a != b for a, b in zip(got, right)) == 1
    share = sum(map(one_off, pairs)) / len(pairs)
    assert 0.2 < share < 0.4, share  # 2 of the 7 error kinds (some counts are near misses by chance)
    rng = random.Random(0)
    for out in ("dog", "DOG", "d-o-g", "dog dog", "3", "1"):
        miss = G.near_miss(rng, out)
        assert miss != out and len(miss) == len(out)
        if not out.isdigit():  # one letter changed, in the same case; the rest kept
            assert sum(a != b for a, b in zip(miss, out)) == 1
            assert all(a == b or (a.isalpha() and a.isupper() == b.isupper()) for a, b in zip(miss, out))


# ---------------------------------------------------------------- the build


def test_rebuilding_the_base_is_deterministic_and_records_its_flaws(tmp_path):
    from safetensors.torch import load_file

    from thinkrl.task.build import main as build

    args = ["--steps", "4", "--corpus", "400", "--general", "80", "--batch-size", "8", "--threads", "1",
            "--log-every", "2", "--no-measure"]
    built = []
    for name in ("a", "b"):
        assert build(["--out", str(tmp_path / name), *args]) == 0
        built.append(load_file(str(tmp_path / name / "model.safetensors")))
        info = json.loads((tmp_path / name / "build_info.json").read_text())
        assert info["corpus_style"] == "r1zero" and info["style_mix"] == ar.STYLE_MIX and info["general_rows"] == 80
    assert built[0].keys() == built[1].keys()
    assert all(torch.equal(built[0][k], built[1][k]) for k in built[0])
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
    assert "base_accuracy_t1.0" not in info  # --no-measure
