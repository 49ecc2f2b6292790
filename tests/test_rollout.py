"""The transformers rollout engine: log-probs agree with the trainer's, padding changes
nothing, stop conditions and sampling filters work, and a seed fixes the samples."""

import pytest
import torch

from thinkrl.policy import SequenceBatch, completion_logprobs, load_model, load_tokenizer
from thinkrl.rollout import HFEngine, SamplingParams
from thinkrl.rollout.hf import sample_tokens


@pytest.fixture(scope="module")
def engine(qwen2_dir):
    tok = load_tokenizer(str(qwen2_dir))
    model = load_model(str(qwen2_dir), torch.device("cpu"))
    return HFEngine(model, tok, "cpu")


def prompts(engine):
    texts = ["What is 347+85?", "A conversation between User and Assistant.", "check"]
    return [engine.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generation_logprobs_equal_trainer_logprobs(engine, temperature):
    p = prompts(engine)
    params = SamplingParams(n=4, temperature=temperature, top_p=0.9, max_new_tokens=12)
    out = engine.generate(p, params, generator=torch.Generator().manual_seed(0))
    assert len(out) == 12 and out.prompt_ids[4] == p[1]
    batch = SequenceBatch.build(out.prompt_ids, out.completion_ids, engine.pad_id, "cpu")
    with torch.no_grad():
        lp = completion_logprobs(engine.model, batch, temperature)
    for i, gen_lp in enumerate(out.logprobs):
        assert torch.allclose(lp[i, : len(gen_lp)], torch.tensor(gen_lp), atol=1e-4), i


def test_left_padding_does_not_change_logprobs(engine):
    p = prompts(engine)
    comp = [[5, 6, 7, 8]] * 3
    together = SequenceBatch.build(p, comp, engine.pad_id, "cpu")
    with torch.no_grad():
        lp_all = completion_logprobs(engine.model, together)
        for i in range(3):
            alone = SequenceBatch.build([p[i]], [comp[i]], engine.pad_id, "cpu")
            assert torch.allclose(completion_logprobs(engine.model, alone)[0], lp_all[i], atol=1e-5)


def test_seed_fixes_samples_and_different_seeds_differ(engine):
    p = prompts(engine)
    params = SamplingParams(n=3, max_new_tokens=10)
    a = engine.generate(p, params, generator=torch.Generator().manual_seed(1))
    b = engine.generate(p, params, generator=torch.Generator().manual_seed(1))
    c = engine.generate(p, params, generator=torch.Generator().manual_seed(2))
    assert a.completion_ids == b.completion_ids
    assert a.completion_ids != c.completion_ids


def test_stop_string_ends_the_completion(engine):
    # force the stop string: make the model always emit the tokens of "</answer>" in a cycle
    stop_ids = engine.tokenizer("</answer>", add_special_tokens=False)["input_ids"]
    model = engine.model
    p = prompts(engine)[:1]
    params = SamplingParams(n=2, max_new_tokens=30, stop=["</answer>"])
    hook_state = {"t": 0}

    def hook(module, inputs, logits):
        # bias the logits so the next token follows the stop string's tokens in order
        target = stop_ids[hook_state["t"] % len(stop_ids)]
        logits[:, -1, :] = -1e9
        logits[:, -1, target] = 0
        hook_state["t"] += 1
        return logits

    engine.generate(p, SamplingParams(n=1, max_new_tokens=1))  # the decoder's first-use check runs unhooked
    h = model.lm_head.register_forward_hook(hook)
    try:
        out = engine.generate(p, params, generator=torch.Generator().manual_seed(0))
    finally:
        h.remove()
    for text, reason, ids in zip(out.texts, out.finish_reasons, out.completion_ids):
        assert reason == "stop"
        assert text.endswith("</answer>") and len(ids) == len(stop_ids)


def test_max_new_tokens_truncates_with_reason_length(engine):
    out = engine.generate(prompts(engine), SamplingParams(n=1, max_new_tokens=3), generator=torch.Generator().manual_seed(0))
    for ids, reason in zip(out.completion_ids, out.finish_reasons):
        assert len(ids) <= 3
        assert reason == ("length" if len(ids) == 3 and engine.tokenizer.eos_token_id not in ids else "stop")


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    tok, lp = sample_tokens(logits, SamplingParams(top_k=2), gen)
    assert set(tok.tolist()) == {0, 1}
    tok, _ = sample_tokens(logits, SamplingParams(top_p=0.75), gen)  # 0.5 + 0.3 covers 0.75
    assert set(tok.tolist()) == {0, 1}
    tok, lp = sample_tokens(logits, SamplingParams(), gen)
    freq = torch.bincount(tok, minlength=4).float() / len(tok)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04)
    # the log-prob reported is that of the untruncated distribution
    assert torch.allclose(lp, logits[0].log_softmax(-1)[tok])


def test_length_buckets_cover_every_row_once_and_split_only_when_padding_drops():
    from thinkrl.policy import length_buckets

    assert length_buckets([5] * 8) == [list(range(8))]  # equal lengths: one forward
    lengths = [3, 30, 4, 28, 5, 29, 3, 31, 30, 2, 4, 27]
    parts = length_buckets(lengths)
    assert sorted(i for p in parts for i in p) == list(range(12)) and len(parts) > 1
    assert all(lengths[a[-1]] <= lengths[b[0]] for a, b in zip(parts, parts[1:]))  # shortest first
    padded = sum(len(p) * max(lengths[i] for i in p) for p in parts)
    assert padded < 0.9 * 12 * 31
    assert length_buckets([]) == [[]] and length_buckets([7]) == [[0]]


def test_shared_prompt_forward_equals_plain_forward_in_value_and_gradient(engine):
    from thinkrl.policy import length_buckets

    p = prompts(engine)
    out = engine.generate(p, SamplingParams(n=3, max_new_tokens=9), generator=torch.Generator().manual_seed(4))
    # completions of very different lengths, so that they run in more than one group by length
    comp = [c[: 1 + (i * 5) % 9] for i, c in enumerate(out.completion_ids)]
    assert len(length_buckets([len(c) for c in comp])) > 1
    batch = SequenceBatch.build(out.prompt_ids, comp, engine.pad_id, "cpu", out.group_ids)
    model = engine.model
    grads = []
    for share in (False, True):
        model.zero_grad(set_to_none=True)
        lp = completion_logprobs(model, batch, 0.8, share_prompts=share)
        (lp * batch.completion_mask).sum().backward()
        grads.append({n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None})
        if not share:
            plain = lp.detach()
    assert torch.allclose(lp.detach()[batch.completion_mask], plain[batch.completion_mask], atol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name
    model.zero_grad(set_to_none=True)


def test_rollouts_name_the_group_of_every_completion(engine):
    p = prompts(engine)
    out = engine.generate(p, SamplingParams(n=3, max_new_tokens=4), generator=torch.Generator().manual_seed(0))
    assert out.group_ids == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(out.prompt_ids[i] == p[g] for i, g in enumerate(out.group_ids))


def test_the_shared_prompt_forward_runs_one_prompt_per_group(engine):
    """Groups come from the engine, not from comparing prompts: two groups of one question
    stay two, each group's prompt is run once, and the values are the plain forward's."""
    p = prompts(engine)
    same = [p[0], p[1], p[0]]  # one question drawn twice in a step
    out = engine.generate(same, SamplingParams(n=2, max_new_tokens=6), generator=torch.Generator().manual_seed(2))
    model, rows = engine.model, []
    hook = model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        with torch.no_grad():
            grouped = SequenceBatch.build(out.prompt_ids, out.completion_ids, engine.pad_id, "cpu", out.group_ids)
            shared = completion_logprobs(model, grouped)
            assert rows == [3, 6]  # the three groups' prompts, then the six completions
            plain = completion_logprobs(model, SequenceBatch.build(out.prompt_ids, out.completion_ids, engine.pad_id,
                                                                   "cpu"))
            assert rows[2:] == [6]  # no group ids: the plain forward
            sub = grouped.slice(slice(1, 4))  # a micro-batch cuts groups: ids 0, 1, 1
            completion_logprobs(model, sub)
            assert rows[3:] == [2, 3]
    finally:
        hook.remove()
    m = grouped.completion_mask
    assert torch.allclose(shared[m], plain[m], atol=1e-5)
    with pytest.raises(ValueError, match="different prompts"):
        SequenceBatch.build(out.prompt_ids, out.completion_ids, engine.pad_id, "cpu", [0] * len(out))


def test_only_tokens_that_can_end_a_stop_string_trigger_the_check(engine):
    from thinkrl.rollout.hf import _completes

    for text, expected in [("</answer>", True), ("r>", True), ("er> x", True), ("x</answer>y", True), (">", True),
                           ("</think>", False), ("<answer>", False), ("answer", False), ("", False)]:
        assert _completes(text, "</answer>") == expected, text
    flags = engine._stop_candidates(["</answer>", "。"])
    tok = engine.tokenizer
    for i in tok("。", add_special_tokens=False)["input_ids"]:  # bytes of one character: each may end it
        assert flags[i]
    assert flags[tok("</answer>", add_special_tokens=False)["input_ids"][-1]]
    assert not flags[tok("What", add_special_tokens=False)["input_ids"][0]]
