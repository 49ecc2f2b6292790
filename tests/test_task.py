"""The embedded task and its shipped base model."""

import json
import random

import pytest
import torch

from thinkrl.task import TINY_DIR
from thinkrl.task import arithmetic as ar
from thinkrl.template import render


def test_problems_have_their_level_a_carry_and_the_right_sum():
    rng = random.Random(0)
    for level in ar.LEVELS:
        for _ in range(200):
            p = ar.make_problem(rng, level)
            assert int(p["answer"]) == p["a"] + p["b"]
            assert len(str(p["a"])) == ar._DIGITS[level][0] and ar.has_carry(p["a"], p["b"])


def test_traces_correct_buggy_and_reflective():
    think, answer = ar.working(347, 85, "correct")
    assert (think, answer) == ("7+5=12 4+8+1=13 3+0+1=4", "432")
    assert ar.working(347, 85, "buggy") == ("7+5=12 4+8=12 3+0=3", "322")
    think, answer = ar.working(347, 85, "reflective")
    assert answer == "432" and think.count("wait") == 2
    assert ar.working(95, 5, "correct")[1] == "100"  # the final carry becomes a digit
    rng = random.Random(1)
    for _ in range(300):  # every kind is consistent with its own working
        a, b = rng.randrange(10, 99999), rng.randrange(1, 99999)
        assert ar.working(a, b, "correct")[1] == str(a + b) == ar.working(a, b, "reflective")[1]
        if ar.has_carry(a, b):
            assert ar.working(a, b, "buggy")[1] != str(a + b)


def test_every_step_of_a_correct_trace_is_true_and_off_format_traces_miss_a_tag():
    import re

    rng = random.Random(2)
    for level in ar.LEVELS:
        for _ in range(50):
            p = ar.make_problem(rng, level)
            text = ar.completion(p["a"], p["b"], "correct")
            think = re.fullmatch(r" <think>(.*)</think> <answer>(\d+)</answer>", text)
            assert think and think.group(2) == p["answer"]
            for step in think.group(1).split():
                lhs, rhs = step.split("=")
                assert sum(map(int, lhs.split("+"))) == int(rhs)
            off = ar.completion(p["a"], p["b"], "off_format", rng)
            assert not re.fullmatch(r" <think>.*</think> <answer>\d+</answer>", off)


def test_splits_are_deterministic_balanced_and_disjoint():
    corpus, train, test = ar.make_splits(seed=5, n_train=400, n_test=80, n_corpus=400)
    again = ar.make_splits(seed=5, n_train=400, n_test=80, n_corpus=400)
    assert (corpus, train, test) == again
    test_q = {p["question"] for p in test}
    assert not test_q & {p["question"] for p in train} and not test_q & {p["question"] for p in corpus}
    assert [sum(p["level"] == lv for p in test) for lv in ar.LEVELS] == [20, 20, 20, 20]


@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(TINY_DIR), AutoTokenizer.from_pretrained(TINY_DIR)


def test_shipped_model_and_tokenizer_load(shipped):
    model, tok = shipped
    assert model.config.model_type == "qwen2"
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 3e6
    assert tok.padding_side == "left" and tok.eos_token_id != tok.pad_token_id
    ids = tok(" <think>17+5=22</think> <answer>22</answer>", add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert "<think>" in pieces and "</answer>" in pieces
    assert all(len(p) == 1 for p in pieces if p.isdigit())  # every digit its own token
    assert tok.decode(ids) == " <think>17+5=22</think> <answer>22</answer>"
    assert tok.convert_ids_to_tokens(tok("12345", add_special_tokens=False)["input_ids"]) == list("12345")
    batch = tok(["What is 1+2?", "What is 347+85?"], padding=True, add_special_tokens=False)
    assert batch["input_ids"][0][0] == tok.pad_token_id and batch["attention_mask"][0][0] == 0  # left padding
    assert tok.eos_token_id in (model.config.eos_token_id, model.generation_config.eos_token_id)
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_shipped_data_and_build_record():
    test = [json.loads(l) for l in (TINY_DIR / "test.jsonl").read_text().splitlines()]
    train = [json.loads(l) for l in (TINY_DIR / "train.jsonl").read_text().splitlines()]
    assert len(test) == 300 and len(train) >= 5000
    assert not {r["question"] for r in test} & {r["question"] for r in train}
    assert [sum(r["level"] == lv for r in test) for lv in ar.LEVELS] == [75, 75, 75, 75]
    for r in test[:50] + train[:50]:
        a, b = map(int, r["question"].removeprefix("What is ").removesuffix("?").split("+"))
        assert str(a + b) == r["answer"]
    info = json.loads((TINY_DIR / "build_info.json").read_text())
    assert info["base_accuracy_t0.6_top_p0.95"]["accuracy"] < 0.40  # a base model (issue: below 40%)


def test_shipped_model_writes_the_task_format(shipped):
    model, tok = shipped
    prompt = tok(render("What is 347+85?"), return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(**prompt, do_sample=True, max_new_tokens=40, num_return_sequences=8,
                         pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert sum("<answer>" in t and "7+5=12" in t for t in texts) >= 4, texts
