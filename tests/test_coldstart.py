"""Stage 1: the readable form (on hand-made and on real embedded-model completions), the
kept/dropped report on a constructed set, few-shot prompts that fit the 512-token context,
and small runs on the embedded model."""

from __future__ import annotations

import json
import re
import time

import pytest

from thinkrl.sections import RunOptions
from thinkrl.cli import main as cli_main
import torch

from thinkrl.config import ConfigError
from thinkrl.config_io import load_into
from thinkrl.pipeline.coldstart import (ColdStartConfig, ReadableConfig, build_few_shot_rows, embedded_worked_example,
                                        few_shot_prompt, load_prompts, load_worked_examples, readable,
                                        resolve_model, run_coldstart, select, validate)
from thinkrl.rewards import get_reward
from thinkrl.pipeline.filters import unclean_steps
from thinkrl.rewards.math import extract_answer

ACC, STRICT, LENIENT = get_reward("accuracy"), get_reward("format"), get_reward("format_lenient")

# ---------------------------------------------------------------- readable, by hand


def test_readable_keeps_the_reasoning_drops_the_rest_and_adds_the_summary():
    c = "Sure!  <think>  7+5=12   4+8+1=13\n\n\n\n3+0+1=4 </think> so it is <answer>432</answer> bye"
    assert readable(c, "432") == " <think>7+5=12 4+8+1=13\n\n3+0+1=4</think> So the answer is 432. <answer>432</answer>"


def test_readable_output_is_read_by_the_rewards():
    r = readable(" <think>7+5=12 4+8+1=13 3+0+1=4</think> <answer>432</answer>", "432")
    assert ACC([r], answer=["432"]) == [1.0]
    assert LENIENT([r]) == [1.0]
    assert STRICT([r]) == [0.0]  # the summary sits between the blocks: the strict R1-Zero format says no


@pytest.mark.parametrize("completion", [
    " 7+5=12 <answer>432</answer>",  # no reasoning block
    " <think>7+5=12 <answer>432</answer>",  # never closed
    " </think>7+5=12<think> <answer>432</answer>",  # closed before opened
    " <think>a</think> <think>b</think> <answer>432</answer>",  # two blocks
    " <think>   \n </think> <answer>432</answer>",  # blank reasoning
    " <think>so <answer>432</answer></think> <answer>432</answer>",  # an answer inside the reasoning
])
def test_readable_refuses_completions_without_usable_reasoning(completion):
    assert readable(completion, "432") is None


def test_readable_with_other_markers_and_summary():
    cfg = ReadableConfig(reasoning_open="<|begin_of_reasoning|>", reasoning_close="<|end_of_reasoning|>",
                         summary="Summary: {answer}.")
    r = readable(" <think>7+5=12</think> <answer>12</answer>", "12", cfg)
    assert r == " <|begin_of_reasoning|>7+5=12<|end_of_reasoning|> Summary: 12. <answer>12</answer>"
    assert ACC([r], answer=["12"]) == [1.0]
    assert readable(" <think>see <|end_of_reasoning|></think> <answer>1</answer>", "1", cfg) is None


def test_readable_config_is_validated():
    for bad, match in [(dict(template=" {open}{reasoning}{close} {summary}"), "must end with"),
                       (dict(template=" {open}{close} {summary} <answer>{answer}</answer>"), "{reasoning}"),
                       (dict(summary="<answer>{answer}</answer>"), "summary must not"),
                       (dict(summary="So {answr}."), "bad placeholder")]:
        cfg = ColdStartConfig()
        for k, v in bad.items():
            setattr(cfg.readable, k, v)
        with pytest.raises(ConfigError, match=re.escape(match)):
            validate(cfg)
    with pytest.raises(ConfigError, match="did you mean 'summary'"):
        load_into(ColdStartConfig(), None, ["readable.sumary=x"])
    with pytest.raises(ConfigError, match="mode"):
        validate(load_into(ColdStartConfig(), None, ["mode=distill"]))


def test_prompt_ids_must_be_unique(tmp_path):
    from thinkrl.data import DataError
    from thinkrl.pipeline.coldstart import PromptsConfig

    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "a", "question": "q1", "answer": "1"}\n{"id": "a", "question": "q2", "answer": "2"}\n')
    with pytest.raises(DataError, match="the id 'a' is used by 2 rows"):
        load_prompts(PromptsConfig(data=str(f)))
    f.write_text('{"question": "q1", "answer": "1"}\n{"question": "q2", "answer": "2"}\n')
    assert [r["id"] for r in load_prompts(PromptsConfig(data=str(f)))] == [0, 1]


# ---------------------------------------------------------------- readable, on real outputs


@pytest.fixture(scope="module")
def embedded_samples():
    from thinkrl.rollout.sample import SampleSettings, sample_answers

    torch.set_num_threads(1)
    rows = load_prompts(ColdStartConfig().prompts)[:16]
    return rows, sample_answers("embedded", rows, SampleSettings(n=4, temperature=1.0, top_p=1.0, seed=1, device="cpu"))


def test_readable_on_real_embedded_outputs(embedded_samples):
    rows, samples = embedded_samples
    completions = [s["completion"] for s in samples]
    refs = [s["row"]["answer"] for s in samples]
    strict, acc = STRICT(completions), ACC(completions, answer=refs)
    rewritten = 0
    for c, ref, f, a in zip(completions, refs, strict, acc):
        r = readable(c, extract_answer(c) or "")
        if f == 1.0:  # every well-formed completion has a readable form ...
            assert r is not None, c
            inside = c[c.index("<think>") + 7: c.index("</think>")]
            assert r.startswith(" <think>" + " ".join(inside.split()) + "</think> So the answer is ")
            assert ACC([r], answer=[ref]) == [a]  # ... that the accuracy reward scores as the original
            assert LENIENT([r]) == [1.0]
            rewritten += 1
        elif "<think>" not in c:
            assert r is None
    assert rewritten >= len(samples) // 2  # the base writes the format about 90% of the time at T=1


def test_select_on_real_outputs_keeps_only_correct_well_formed_samples(embedded_samples):
    rows, samples = embedded_samples
    cfg = ColdStartConfig()
    cfg.keep.max_per_prompt, cfg.keep.dedup = 0, False
    kept, dropped = select(samples, {r["id"]: r for r in rows}, cfg)
    completions = [s["completion"] for s in samples]
    good = [s for s, f, a in zip(samples, STRICT(completions), ACC(completions, answer=[s["row"]["answer"] for s in samples]))
            if f == 1.0 and a == 1.0 and s["finish_reason"] == "stop" and not unclean_steps(s["completion"])]
    assert dropped["unclean_steps"] > 0  # the base writes stray tokens and repeated steps now and then
    assert [(r["source"]["prompt_id"], r["source"]["sample_index"]) for r in kept] == \
        [(s["prompt_id"], s["sample_index"]) for s in good]
    assert len(kept) + sum(dropped.values()) == len(samples)
    assert 0 < len(kept) < len(samples)


# ---------------------------------------------------------------- the kept/dropped report on a constructed set


def _s(pid, idx, completion, finish="stop"):
    return {"prompt_id": pid, "sample_index": idx, "completion": completion, "finish_reason": finish,
            "model": "hand"}


def test_select_report_on_a_constructed_set():
    rows = {0: {"question": "What is 45+7?", "answer": "52", "level": 1},
            1: {"question": "What is 179+40?", "answer": "219", "level": 2}}
    right0 = " <think>5+7=12 4+0+1=5</think> <answer>52</answer>"
    samples = [_s(0, 0, right0), _s(0, 1, " <think>5+7=12  4+0+1=5</think>  <answer>52</answer>"),  # duplicate
               _s(0, 2, " <think>5+7=12 4+0=4</think> <answer>42</answer>"),  # wrong
               _s(0, 3, " 5+7=12 4+0+1=5 <answer>52</answer>"),  # bad format
               _s(0, 4, " <think>5+7=12 4+0+1=5</think> <answer>5", finish="length"),  # truncated
               _s(0, 5, " <think>5+7=12 4+0+1=5 wait</think> <answer>52</answer>"),
               _s(0, 6, " <think>5+7=12 wait carry 4+0+1=5</think> <answer>52</answer>"),  # over the cap of 2
               _s(1, 0, " <think>" + "9+0=9 1+1=2 " * 40 + "</think> <answer>219</answer>"),  # too long for 512 tokens
               _s(1, 1, " <think>9+0=9 7+4=11 1+0+1=2</think> <answer>219</answer>"),
               _s(1, 2, " <think>9+0=9 .. 7+4=11 1+0+1=2</think> <answer>219</answer>"),  # a stray token
               _s(1, 3, " <think>9+0=9 7+4=11 7+4=11 1+0+1=2</think> <answer>219</answer>")]  # a step twice
    from thinkrl.policy import load_tokenizer

    cfg = ColdStartConfig()
    kept, dropped = select(samples, rows, cfg, load_tokenizer("embedded"), context=512)
    assert [(r["source"]["prompt_id"], r["source"]["sample_index"]) for r in kept] == [(0, 0), (0, 5), (1, 1)]
    assert dropped == {"duplicate": 1, "wrong_answer": 1, "bad_format": 1, "truncated": 1, "over_cap": 1,
                       "too_long": 1, "unclean_steps": 2}
    assert kept[0] == {"prompt": "What is 45+7?", "answer": "52", "level": 1, "type": "reasoning",
                       "response": " <think>5+7=12 4+0+1=5</think> So the answer is 52. <answer>52</answer>",
                       "source": {"model": "hand", "prompt_id": 0, "sample_index": 0, "mode": "refine"}}


# ---------------------------------------------------------------- few-shot prompts


def test_embedded_worked_example_has_the_working_and_a_check():
    assert embedded_worked_example("What is 347+85?", "432") == "7+5=12 4+8+1=13 3+0+1=4 check 432-85=347"
    assert embedded_worked_example("What is 347+85?", "433") is None
    assert embedded_worked_example("Name a prime.", "2") is None


def test_few_shot_prompts_fit_the_context_and_end_with_the_question():
    from thinkrl.policy import load_tokenizer
    from thinkrl.template import R1_ZERO

    tok = load_tokenizer("embedded")
    cfg = ColdStartConfig(mode="few_shot")
    rows = load_prompts(cfg.prompts)
    pool = load_worked_examples("embedded")
    built = build_few_shot_rows(rows, pool, cfg.few_shot.shots, cfg.readable, seed=0)
    lengths = [len(tok(r["question"])["input_ids"]) for r in built]
    assert max(lengths) + cfg.sampling.max_new_tokens <= 512  # the default shots fit with room to answer
    for row, b in zip(rows, built):
        p = b["question"]
        assert p.startswith(R1_ZERO.split("User:")[0]) and p.endswith(f"User: {row['question']}. Assistant:")
        assert p.count("User:") == cfg.few_shot.shots + 1 and p.count(" check ") == cfg.few_shot.shots
        assert p.count("So the answer is") == cfg.few_shot.shots and b["cold_question"] == row["question"]
        assert p.count(row["question"]) == 1  # the question is never one of its own examples
    assert build_few_shot_rows(rows, pool, 3, cfg.readable, seed=0) == built  # seeded
    ex = few_shot_prompt("Q?", [{"question": "What is 45+7?", "reasoning": "r", "answer": "52"}], cfg.readable)
    assert "User: What is 45+7?. Assistant: <think>r</think> So the answer is 52. <answer>52</answer> User: Q?. " \
           "Assistant:" in ex


def test_too_many_shots_fail_at_start_with_the_fix(tmp_path):
    cfg = ColdStartConfig(mode="few_shot", run=RunOptions(threads=1))
    cfg.few_shot.shots, cfg.prompts.limit = 8, 4
    with pytest.raises(ConfigError, match="lower few_shot.shots"):
        run_coldstart(cfg, tmp_path)


# ---------------------------------------------------------------- runs on the embedded model


def test_run_coldstart_refine_on_the_embedded_model(tmp_path):
    cfg = ColdStartConfig(run=RunOptions(threads=1))
    cfg.prompts.limit, cfg.sampling.n = 24, 4
    t0 = time.time()
    report = run_coldstart(cfg, tmp_path / "a")
    assert time.time() - t0 < 60
    rows = [json.loads(line) for line in (tmp_path / "a" / "coldstart.jsonl").read_text().splitlines()]
    assert json.loads((tmp_path / "a" / "report.json").read_text()) == report
    assert report["sampled"] == 96 and report["kept"] == len(rows) > 0
    assert report["kept"] + sum(report["dropped"].values()) == 96
    assert set(report["dropped"]) <= {"wrong_answer", "bad_format", "truncated", "duplicate", "over_cap", "too_long",
                                      "no_reasoning", "no_reference", "prompt_too_long", "unclean_steps"}
    assert report["dropped"]["wrong_answer"] > 0  # the base model is right about a third of the time
    hist = {int(k): v for k, v in report["per_prompt_kept"].items()}
    assert sum(hist.values()) == 24 and sum(k * v for k, v in hist.items()) == len(rows) and max(hist) <= 2
    prompts = load_prompts(cfg.prompts)
    for r in rows:
        assert set(r) == {"prompt", "response", "answer", "level", "type", "source"} and r["type"] == "reasoning"
        assert r["source"]["model"] == "embedded" and r["source"]["mode"] == "refine"
        assert r["prompt"] == prompts[r["source"]["prompt_id"]]["question"]
        assert r["response"].endswith(f"So the answer is {r['answer']}. <answer>{r['answer']}</answer>")
    assert ACC([r["response"] for r in rows], answer=[r["answer"] for r in rows]) == [1.0] * len(rows)
    again = run_coldstart(cfg, tmp_path / "b")  # deterministic under the seed
    timing = ("seconds", "sampling_seconds", "output")
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in report.items() if k not in timing}
    assert (tmp_path / "b" / "coldstart.jsonl").read_text() == (tmp_path / "a" / "coldstart.jsonl").read_text()


def test_run_coldstart_few_shot_reports_every_sample(tmp_path):
    cfg = ColdStartConfig(mode="few_shot", run=RunOptions(threads=1))
    cfg.prompts.limit, cfg.sampling.n, cfg.sampling.max_new_tokens = 6, 2, 60
    report = run_coldstart(cfg, tmp_path)
    assert report["mode"] == "few_shot" and report["sampled"] == 12
    assert report["kept"] + sum(report["dropped"].values()) == 12
    assert report["prompt_tokens"]["max"] + 60 <= 512 and "prompt_too_long" not in report["dropped"]


def test_resolve_model_finds_the_newest_checkpoint_of_a_run(tmp_path, qwen2_dir):
    from thinkrl.checkpoint import save_checkpoint
    from thinkrl.policy import load_model, load_tokenizer

    model, tok = load_model(str(qwen2_dir), torch.device("cpu")), load_tokenizer(str(qwen2_dir))
    for step in (10, 20):
        save_checkpoint(tmp_path / "run" / "checkpoints", step, model, tok, {}, keep=2)
    assert resolve_model(str(tmp_path / "run")) == str(tmp_path / "run" / "checkpoints" / "step_000020")
    assert resolve_model(str(tmp_path / "run" / "checkpoints")).endswith("step_000020")
    assert resolve_model("embedded") == "embedded"
    (tmp_path / "broken" / "step_000001").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        resolve_model(str(tmp_path / "broken"))


def test_cli(tmp_path, capsys):
    assert cli_main(["coldstart", "--out", str(tmp_path), "prompts.limit=4", "sampling.n=2", "run.threads=1"]) == 0
    assert "coldstart: kept" in capsys.readouterr().out
    assert cli_main(["coldstart", "--out", str(tmp_path / "bad"), "sampling.n=0"]) == 2
    assert "sampling.n must be >= 1" in capsys.readouterr().err
