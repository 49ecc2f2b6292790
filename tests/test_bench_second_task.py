"""bench/second_task.py's procedures, graded by thinkrl's rewards; its tokenizer through both
loaders; bench/reference_sampler.py against transformers' forward on tiny random models."""

import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import second_task as st  # noqa: E402
from reference_sampler import check  # noqa: E402

from thinkrl.rewards import get_reward  # noqa: E402


def digitwise(a: int, b: int, f) -> int:
    """The number whose digits are f(digit of a, digit of b), column by column."""
    ta, tb = str(a)[::-1], str(b)[::-1].ljust(len(str(a)), "0")
    return int("".join(str(f(int(x), int(y))) for x, y in zip(ta, tb))[::-1])


def test_procedures_and_rewards():
    rng = random.Random(3)
    problems = [st.make_problem(rng, level) for level in st.LEVELS for _ in range(200)]
    texts = [st.completion(p["a"], p["b"], "correct", rng) for p in problems]
    assert all(st.needs_borrow(p["a"], p["b"]) and p["a"] > p["b"] for p in problems)
    assert get_reward("accuracy")(texts, answer=[p["answer"] for p in problems], workers=0) == [1.0] * len(texts)
    assert get_reward("format")(texts) == [1.0] * len(texts)
    for p in problems:
        a, b = p["a"], p["b"]
        assert st.working(a, b, "correct")[1] == str(a - b)
        assert st.working(a, b, "smaller_from_larger")[1] == str(digitwise(a, b, lambda x, y: abs(x - y)))
        assert st.working(a, b, "no_payback")[1] == str(digitwise(a, b, lambda x, y: (x - y) % 10))
    assert st.working(734, 258, "correct")[0] == "14-8=6 13-5-1=7 7-2-1=4"
    wrong = [st.completion(p["a"], p["b"], "smaller_from_larger", rng) for p in problems]
    assert sum(get_reward("accuracy")(wrong, answer=[p["answer"] for p in problems], workers=0)) < 0.05 * len(wrong)


def test_tokenizer_loads_both_ways(tmp_path):
    from transformers import AutoTokenizer

    from thinkrl.policy import load_tokenizer

    rng = random.Random(0)
    probs = [st.make_problem(rng, 1 + i % 3) for i in range(300)]
    texts = [st.TEMPLATE.replace("{prompt}", p["question"]) + st.completion(p["a"], p["b"], "correct", rng)
             for p in probs]
    st.build_tokenizer(texts, 96).save_pretrained(tmp_path)
    for tok in (AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(str(tmp_path))):
        ids = tok(texts[0], add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == texts[0]
        assert tok.convert_ids_to_tokens(tok.convert_tokens_to_ids("</answer>")) == "</answer>"
        assert (tok.eos_token, tok.pad_token) == ("</s>", "<pad>")


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_reference_sampler_matches_transformers(arch):
    """float64: only the algorithm can differ (Qwen2 has q/k/v biases, tied embeddings; the
    Llama 4 query heads per KV head, untied)."""
    import transformers

    kw = dict(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=64,
              eos_token_id=1, rope_theta=1000.0)
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, **kw)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False, **kw)
        model = transformers.LlamaForCausalLM(cfg)
    torch.manual_seed(0)
    for p in model.parameters():  # random norms and biases too, so that a missing one shows
        torch.nn.init.normal_(p, std=0.3)
    model = model.double().eval()
    prompts = [[5, 9, 13, 2, 7], [3, 4], [8, 8, 30, 41, 12, 6, 22]]
    with torch.no_grad():
        res = check(model, prompts, stop_ids={1, 2, 3}, G=3, max_new_tokens=12)
    assert res["max_abs_diff"] < 1e-9, res
    assert 0 < res["rows_stopped_early"] < res["rows"], res  # rows left the batch while others went on
