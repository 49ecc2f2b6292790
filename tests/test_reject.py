"""Stage 3: the readability filters, the selection of rejection sampling on constructed sets
with known correctness (hedges included), dedup and cap, the non-reasoning mix, provenance,
and a small run on the embedded model."""

from __future__ import annotations

import json
import time

import pytest

from thinkrl.sections import RunOptions
from thinkrl.cli import main as cli_main

from thinkrl.config import ConfigError
from thinkrl.config_io import load_into
from thinkrl.data import DataError
from thinkrl.pipeline import filters
from thinkrl.pipeline.reject import RejectConfig, load_general, mix, run_reject, select, validate
from thinkrl.rewards import get_reward

# ---------------------------------------------------------------- filters


def test_mixed_language_is_the_share_of_target_words_below_the_threshold():
    english = "<think>First add the units, then carry the one.</think> <answer>5</answer>"
    mixed = "<think>First add 个位 then 进位 the big one</think> <answer>5</answer>"  # 6 English words, 4 Han
    assert filters.language_share(mixed) == pytest.approx(6 / 10)
    assert filters.mixed_language(english) == ""
    assert "60%" in filters.mixed_language(mixed, min_share=0.95)
    assert filters.mixed_language(mixed, min_share=0.6) == ""  # exactly at the threshold passes
    assert filters.mixed_language(mixed, lang="zh", min_share=0.3) == ""  # 40% Han
    # numbers only: no words, no language to mix (the embedded task's chains of thought)
    assert filters.mixed_language("<think>7+5=12 4+8+1=13</think> <answer>432</answer>") == ""
    # only the chain of thought is looked at
    assert filters.mixed_language("<think>add the units</think> 答案是 <answer>5</answer>") == ""


def test_overlong_paragraph_by_characters_and_by_words():
    text = "short one\n\n" + "word " * 30 + "\n  \nlast"
    assert filters.paragraphs(text) == ["short one", ("word " * 30).strip(), "last"]
    assert filters.overlong_paragraph(text) == ""  # both limits off
    assert filters.overlong_paragraph(text, max_chars=149) == ""  # 30 × "word " less the final space
    assert "paragraph 2 has 149 characters" in filters.overlong_paragraph(text, max_chars=148)
    assert "paragraph 2 has 30 words" in filters.overlong_paragraph(text, max_words=29)
    assert filters.overlong_paragraph(text, max_words=30) == ""
    # a single newline does not end a paragraph
    assert "has 4 words" in filters.overlong_paragraph("one two\nthree four", max_words=3)


def test_broken_code_unbalanced_fences_and_python_that_does_not_parse():
    good = "Here:\n```python\ndef f(x):\n    return x + 1\n```\nand\n```\nplain text\n```"
    assert filters.broken_code(good) == ""
    assert filters.broken_code("no code at all") == ""
    assert filters.broken_code("```python\nprint(1)\n") == "unbalanced ``` fences"
    assert filters.broken_code("a\n```python\nx=1\n```\n```\n") == "unbalanced ``` fences"
    assert "does not parse" in filters.broken_code("```python\ndef f(:\n    pass\n```")
    assert "does not parse" in filters.broken_code("```py\nif x\n```")
    # another language is not parsed as python
    assert filters.broken_code("```bash\nfor i in ; do\n```") == ""
    blocks, balanced = filters.code_blocks(good)
    assert balanced and blocks == [("python", "def f(x):\n    return x + 1\n"), ("", "plain text\n")]


def test_dedup_key_dedup_and_cap():
    assert filters.dedup_key("  The  answer\n is\t42 ") == filters.dedup_key("the answer is 42")
    assert filters.dedup_key("ＡＢＣ 1") == filters.dedup_key("abc 1")  # NFKC folds full-width forms
    assert filters.dedup_key("42") != filters.dedup_key("4 2")
    items = [("p", "a"), ("p", "A "), ("q", "a"), ("p", "b")]
    kept, dropped = filters.dedup(items, key=lambda it: (it[0], filters.dedup_key(it[1])))
    assert kept == [("p", "a"), ("q", "a"), ("p", "b")] and dropped == [("p", "A ")]
    kept, dropped = filters.cap_per_prompt(list(range(10)), lambda i: i % 3, cap=2)
    assert kept == [0, 1, 2, 3, 4, 5] and dropped == [6, 7, 8, 9]
    assert filters.cap_per_prompt([1, 2, 3], lambda i: 0, cap=0) == ([1, 2, 3], [])


# ---------------------------------------------------------------- selection on constructed sets


def _s(pid, idx, completion, finish="stop"):
    return {"prompt_id": pid, "sample_index": idx, "completion": completion, "finish_reason": finish}


ROWS = {0: {"question": "What is 347+85?", "answer": "432", "level": 2},
        1: {"question": "Half of one?", "answer": "\\frac{1}{2}"},
        2: {"question": "What is 45+7?", "answer": "52", "level": 1}}

# (sample, correct?) built by hand; hedges are answers the accuracy reward must refuse
CONSTRUCTED = [
    (_s(0, 0, " <think>7+5=12 4+8+1=13 3+0+1=4</think> <answer>432</answer>"), True),
    (_s(0, 1, " <think>7+5=12 4+8=12 3+0=3</think> <answer>322</answer>"), False),
    (_s(0, 2, " <think>7+5=12 4+8+1=13 3+0+1=4 wait check</think> <answer>432</answer>"), True),
    (_s(0, 3, " <think>either</think> <answer>432 or 322</answer>"), False),  # hedge: two candidates
    (_s(0, 4, " <think>list</think> <answer>322, 432</answer>"), False),  # hedge: a list
    (_s(0, 5, " <think>box both</think> <answer>\\boxed{432} \\boxed{433}</answer>"), False),  # hedge: two boxes
    (_s(0, 6, " <think>the answer is <answer>432</answer></think> <answer>432 is correct</answer>"), False),
    (_s(1, 0, " <think>one over two</think> <answer>0.5</answer>"), True),  # math-verify: 0.5 = 1/2
    (_s(1, 1, " <think>one over two</think> <answer>\\frac{2}{4}</answer>"), True),
    (_s(1, 2, " <think>a third</think> <answer>1/3</answer>"), False),
    (_s(1, 3, " <think>I am sure</think> <answer>correct</answer>"), False),  # a claim is not math
    (_s(2, 0, " <think>7+5=12 4+0+1=5</think> <answer>52</answer>"), True),
    (_s(2, 1, " <think>7+5=12</think> <answer>52.0</answer>"), True),
    (_s(2, 2, " <think>7+5=12 4+0=4</think> <answer>42</answer>"), False),
    (_s(2, 3, " <think>52</think> <answer></answer>"), False),  # empty answer
]


def _loose_cfg(**filters_kw) -> RejectConfig:
    cfg = RejectConfig()
    cfg.keep.max_per_prompt, cfg.keep.dedup = 0, False
    for k, v in filters_kw.items():
        setattr(cfg.filters, k, v)
    return cfg


def _ids(kept):
    return {(r["source"]["prompt_id"], r["source"]["sample_index"]) for r in kept}


def test_rejection_sampling_keeps_exactly_the_correct_samples():
    samples = [s for s, _ in CONSTRUCTED]
    truth = {(s["prompt_id"], s["sample_index"]) for s, ok in CONSTRUCTED if ok}
    kept, dropped = select(samples, ROWS, _loose_cfg(require_format="none", clean_steps=False))
    assert _ids(kept) == truth
    assert dropped == {"wrong": len(CONSTRUCTED) - len(truth)}
    # with the default format check the same correct samples survive (each is well formed);
    # the nested answer tags and the empty answer are refused by the format first
    kept, dropped = select(samples, ROWS, _loose_cfg())
    assert _ids(kept) == truth
    assert dropped["bad_format"] == 2 and sum(dropped.values()) == len(CONSTRUCTED) - len(truth)


def test_truncated_and_malformed_samples_are_dropped_even_when_right():
    samples = [_s(2, 0, " <think>7+5=12 4+0+1=5</think> <answer>52</answer>", finish="length"),
               _s(2, 1, " 7+5=12 4+0+1=5 <answer>52</answer>"),  # no think block
               _s(2, 2, " <answer>52</answer> <think>after</think>"),  # blocks out of order
               _s(2, 3, " <think>x</think> <answer>52</answer> <answer>52</answer>")]  # repeated answer
    kept, dropped = select(samples, ROWS, _loose_cfg())
    assert kept == [] and dropped == {"truncated": 1, "bad_format": 3}


def test_unparseable_reference_is_unjudgeable_not_wrong_nor_kept():
    rows = {0: {"question": "Name it", "answer": "\\invalid{{"}}
    kept, dropped = select([_s(0, 0, " <think>x</think> <answer>\\invalid{{</answer>")], rows, _loose_cfg())
    assert kept == [] and dropped == {"unjudgeable": 1}


def test_filters_drop_correct_samples_with_mixed_language_long_paragraphs_broken_code_or_unclean_steps():
    ok = " <think>Add the units first, then carry the one.</think> <answer>52</answer>"
    samples = [_s(2, 0, ok),
               _s(2, 1, " <think>Add 个位 then 进位 the carry</think> <answer>52</answer>"),
               _s(2, 2, " <think>" + "add " * 60 + "</think> <answer>52</answer>"),
               _s(2, 3, " <think>```python\nprint(7+5\n```</think> <answer>52</answer>"),
               _s(2, 4, " <think>```python\nprint(7+5)\n</think> <answer>52</answer>"),
               _s(2, 5, " <think>7+5=12 ## 4+0+1=5</think> <answer>52</answer>"),
               _s(2, 6, " <think>7+5=12 7+5=12 4+0+1=5</think> <answer>52</answer>")]
    kept, dropped = select(samples, ROWS, _loose_cfg(max_paragraph_words=50))
    assert _ids(kept) == {(2, 0)}
    assert dropped == {"mixed_language": 1, "overlong_paragraph": 1, "broken_code": 2, "unclean_steps": 2}
    # each filter can be turned off
    cfg = _loose_cfg(min_language_share=0.0, max_paragraph_words=0, code_blocks=False, clean_steps=False)
    assert len(select(samples, ROWS, cfg)[0]) == 7
    # a row's own language wins over filters.lang
    rows = {2: dict(ROWS[2], lang="zh")}
    assert filters.language_share(samples[1]["completion"], "zh") == 0.5  # 4 Han of 8 words
    assert select([samples[1]], rows, _loose_cfg(min_language_share=0.6))[1] == {"mixed_language": 1}
    assert len(select([samples[1]], rows, _loose_cfg(min_language_share=0.5))[0]) == 1


def test_dedup_then_cap_per_prompt():
    right = " <think>7+5=12 4+0+1=5{}</think> <answer>52</answer>"
    samples = [_s(2, 0, right.format("")), _s(2, 1, " <think>7+5=12  4+0+1=5</think>\n<answer>52</answer>"), _s(2, 2, right.format(" WAIT")),
               _s(2, 3, right.format(" wait")), _s(2, 4, right.format(" check")), _s(2, 5, right.format(" again")),
               _s(0, 0, " <think>7+5=12 4+8+1=13 3+0+1=4</think> <answer>432</answer>"),
               _s(2, 6, " <think>7+5=12 4+0=4</think> <answer>42</answer>")]
    cfg = RejectConfig()
    cfg.keep.max_per_prompt = 2
    kept, dropped = select(samples, ROWS, cfg)
    # duplicates: index 1 (spacing) and 3 (case) of prompt 2; then the first two of prompt 2 stay
    assert _ids(kept) == {(2, 0), (2, 2), (0, 0)}
    assert dropped == {"duplicate": 2, "over_cap": 2, "wrong": 1}
    assert len(kept) + sum(dropped.values()) == len(samples)
    # the same response to different prompts is not a duplicate
    same = " <think>x</think> <answer>52</answer>"
    rows = {0: ROWS[2], 1: ROWS[2]}
    assert len(select([_s(0, 0, same), _s(1, 0, same)], rows, cfg)[0]) == 2


def test_rows_with_tests_are_judged_by_the_code_reward():
    rows = {0: {"question": "Write add(a, b).", "answer": "", "tests": ["assert add(2, 3) == 5", "assert add(0, 0) == 0"]}}
    good = " <think>sum them</think> <answer>done</answer>\n```python\ndef add(a, b):\n    return a + b\n```"
    bad = " <think>oops</think> <answer>done</answer>\n```python\ndef add(a, b):\n    return a - b\n```"
    kept, dropped = select([_s(0, 0, good), _s(0, 1, bad)], rows, _loose_cfg(require_format="format_lenient"))
    assert _ids(kept) == {(0, 0)} and dropped == {"wrong": 1}
    assert kept[0]["source"]["judge"] == "rules:code"


# ---------------------------------------------------------------- the mix


def _general_file(path, n, field="question"):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({field: f"Say hello {i}", "response": f"Hello {i}!", "type": "general"}) + "\n")
    return str(path)


def _kept(n):
    return [{"prompt": f"q{i}", "response": f"r{i}", "type": "reasoning", "source": {"prompt_id": i}} for i in range(n)]


def test_mix_ratio_seed_and_shortfall(tmp_path):
    general = load_general(_general_file(tmp_path / "g.jsonl", 20))
    rows, counts = mix(_kept(10), general, 0.5, seed=1)
    assert counts == {"reasoning": 10, "general_wanted": 5, "general_available": 20, "general": 5, "short_by": 0}
    assert sum(r["type"] == "general" for r in rows) == 5 and sum(r["type"] == "reasoning" for r in rows) == 10
    assert len({r["prompt"] for r in rows if r["type"] == "general"}) == 5  # without replacement
    again, _ = mix(_kept(10), general, 0.5, seed=1)
    other, _ = mix(_kept(10), general, 0.5, seed=2)
    assert again == rows and other != rows
    assert [r["type"] for r in rows] != ["reasoning"] * 10 + ["general"] * 5  # shuffled
    # the ratio rounds: 7 kept × 1/3 -> 2
    assert mix(_kept(7), general, 1 / 3, 0)[1]["general"] == 2
    # too few non-reasoning rows: all of them, and the shortfall reported
    rows, counts = mix(_kept(10), general[:3], 0.5, 0)
    assert counts["general"] == 3 and counts["short_by"] == 2 and len(rows) == 13


def test_general_rows_accept_question_or_prompt_and_reject_bad_lines(tmp_path):
    rows = load_general(_general_file(tmp_path / "p.jsonl", 2, field="prompt"))
    assert rows[1] == {"prompt": "Say hello 1", "response": "Hello 1!", "type": "general",
                       "source": {"data": str(tmp_path / "p.jsonl"), "line": 2}}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "response": "b"}\n{"question": "c"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*'response'"):
        load_general(str(bad))
    bad.write_text('{"question": "a", "response": "b"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_general(str(bad))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no non-reasoning rows"):
        load_general(str(empty))


# ---------------------------------------------------------------- config


def test_config_errors_say_what_to_change(tmp_path):
    cfg = RejectConfig()
    cfg.judge.method = "judge"
    with pytest.raises(ConfigError, match="judge.model"):
        validate(cfg)
    cfg = RejectConfig()
    cfg.mix.ratio = 0.3
    with pytest.raises(ConfigError, match="mix.data is none"):
        validate(cfg)
    with pytest.raises(ConfigError, match="did you mean 'ratio'"):
        load_into(RejectConfig(), None, ["mix.ratoi=0.3"])
    cfg = load_into(RejectConfig(), None, ["filters.require_format=strict", "sampling.temperature=0"])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "filters.require_format" in str(e.value) and "sampling.temperature" in str(e.value)
    assert cli_main(["reject", "--out", str(tmp_path), "judge.method=oracle"]) == 2


# ---------------------------------------------------------------- a run on the embedded model


def test_run_reject_on_the_embedded_model(tmp_path):
    general = _general_file(tmp_path / "general.jsonl", 200)
    cfg = RejectConfig(run=RunOptions(threads=1))
    cfg.prompts.limit, cfg.sampling.n, cfg.keep.max_per_prompt = 24, 4, 2
    cfg.mix.data, cfg.mix.ratio = general, 0.5
    t0 = time.time()
    report = run_reject(cfg, tmp_path / "out")
    elapsed = time.time() - t0
    rows = [json.loads(line) for line in (tmp_path / "out" / "reject.jsonl").read_text().splitlines()]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved == report
    assert report["sampled"] == 96 and report["kept"] + sum(report["dropped"].values()) == 96
    reasoning = [r for r in rows if r["type"] == "reasoning"]
    assert len(reasoning) == report["kept"] > 0
    assert report["mix"]["general"] == round(0.5 * report["kept"]) == sum(r["type"] == "general" for r in rows)
    # provenance on every row; reasoning rows are correct answers to their own prompt
    from thinkrl.data import load_dataset

    train = load_dataset("embedded", "train")
    for r in reasoning:
        src = r["source"]
        assert set(src) == {"checkpoint", "prompt_id", "sample_index", "judge"}
        assert src["checkpoint"] == "embedded" and src["judge"] == "rules:accuracy" and 0 <= src["sample_index"] < 4
        assert r["prompt"] == train[src["prompt_id"]]["question"]
        assert r["answer"] == train[src["prompt_id"]]["answer"] and r["level"] == train[src["prompt_id"]]["level"]
    assert get_reward("accuracy")([r["response"] for r in reasoning], answer=[r["answer"] for r in reasoning]) \
        == [1.0] * len(reasoning)
    assert all(set(r["source"]) == {"data", "line"} for r in rows if r["type"] == "general")
    keys = [(r["source"]["prompt_id"], r["source"]["sample_index"]) for r in reasoning]
    assert len(set(keys)) == len(keys)
    hist = {int(k): v for k, v in report["per_prompt_kept"].items()}
    assert sum(hist.values()) == 24 and sum(k * v for k, v in hist.items()) == report["kept"] and max(hist) <= 2
    assert elapsed < 60
    # deterministic under the seeds
    assert run_reject(cfg, tmp_path / "again")["kept"] == report["kept"]
    assert (tmp_path / "again" / "reject.jsonl").read_text() == (tmp_path / "out" / "reject.jsonl").read_text()


def test_cli_writes_the_dataset_and_prints_the_report(tmp_path, capsys):
    assert cli_main(["reject", "--out", str(tmp_path), "--checkpoint", "embedded", "--prompts", "embedded",
                 "prompts.limit=4", "sampling.n=2", "run.threads=1"]) == 0
    out = capsys.readouterr().out
    assert "reject: kept" in out and "of 8 samples" in out
    assert (tmp_path / "reject.jsonl").exists() and (tmp_path / "config.yaml").exists()
    # the saved config runs again as it is, to the same data
    assert cli_main(["reject", "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "reject.jsonl").read_text() == (tmp_path / "reject.jsonl").read_text()
