"""StaticKV, the sampling loop's preallocated KV cache and forward, against transformers' own
forward and cache: the same logits through left-padded prefill, a group's repeat, decode steps
and dropped rows (lazily kept, then compacted), on each architecture it claims and under LoRA;
everything else goes through transformers, including a model StaticKV would get wrong."""

import pytest
import torch

from thinkrl.policy import SequenceBatch, completion_logprobs
from thinkrl.rollout import HFEngine, SamplingParams
from thinkrl.rollout.kv import HFCache, StaticKV, make_decoder, static_kv_supported


def tiny(kind: str, kv_heads: int = 2, seed: int = 0, **extra):
    import transformers

    cls = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral", "gpt2": "GPT2"}[kind]
    common = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=kv_heads, max_position_embeddings=128, eos_token_id=0, pad_token_id=1)
    if kind == "gpt2":
        common = dict(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=128, eos_token_id=0, bos_token_id=0)
    if kind == "mistral":
        common["sliding_window"] = extra.pop("sliding_window", None)
    torch.manual_seed(seed)
    cfg = getattr(transformers, cls + "Config")(**common, **extra)
    return getattr(transformers, "GPT2LMHeadModel" if kind == "gpt2" else cls + "ForCausalLM")(cfg).eval()


def prompts(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 64, (n,), generator=g).tolist() for n in (7, 3, 5)]


def left_padded(ps, pad=1):
    P = max(map(len, ps))
    ids = torch.full((len(ps), P), pad)
    attn = torch.zeros((len(ps), P), dtype=torch.long)
    for i, p in enumerate(ps):
        ids[i, P - len(p):], attn[i, P - len(p):] = torch.tensor(p), 1
    return ids, attn, (attn.cumsum(-1) - 1).clamp(min=0)


def run(decoder, ids, attn, pos, n, drops, steps=8):
    """Logits of prefill and each step; after step k, the rows listed in drops[k] leave."""
    out = [decoder.prefill(ids, attn, pos).repeat_interleave(n, 0)]
    decoder.repeat(n)
    nxt, live = attn.sum(-1).repeat_interleave(n), torch.arange(len(ids) * n)
    g = torch.Generator().manual_seed(1)
    for k in range(steps):
        if k in drops:
            keep = torch.tensor([i for i, r in enumerate(live.tolist()) if r not in drops[k]])
            decoder.keep(keep)
            nxt, live = nxt[keep], live[keep]
        tok = torch.randint(2, 64, (len(live),), generator=g)
        out.append((live.clone(), decoder.step(tok, nxt)))
        nxt = nxt + 1
    return out


# rows 0, 5 and 7 of 9 leave after step 2 (kept lazily), then 1, 2 and 3 after step 4 (compacted)
DROPS = {2: {0, 5, 7}, 4: {1, 2, 3}, 6: {4}}


@pytest.mark.parametrize("kind,kv_heads,extra", [
    ("qwen2", 2, {}), ("qwen2", 4, {}), ("llama", 2, {}), ("llama", 1, {"attention_bias": True}),
    ("qwen3", 2, {"head_dim": 16}), ("mistral", 2, {}),
    ("llama", 2, {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}),
])
def test_static_kv_gives_transformers_logits(kind, kv_heads, extra):
    model = tiny(kind, kv_heads, **extra)
    assert static_kv_supported(model) is None
    ids, attn, pos = left_padded(prompts())
    with torch.no_grad():
        ours = run(StaticKV(model, ids.shape[1] + 8), ids, attn, pos, 3, DROPS)
        ref = run(HFCache(model, ids.shape[1] + 8), ids, attn, pos, 3, DROPS)
    torch.testing.assert_close(ours[0], ref[0], atol=1e-5, rtol=1e-5)
    for (rows_a, a), (rows_b, b) in zip(ours[1:], ref[1:]):
        assert torch.equal(rows_a, rows_b)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_static_kv_applies_lora_adapters():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny("qwen2"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # adapters that change the output
    ids, attn, pos = left_padded(prompts())
    with torch.no_grad():
        ours = run(StaticKV(model, ids.shape[1] + 8), ids, attn, pos, 2, {})
        ref = run(HFCache(model, ids.shape[1] + 8), ids, attn, pos, 2, {})
        with model.disable_adapter():
            base = HFCache(model, ids.shape[1] + 8).prefill(ids, attn, pos)
    assert (base - ref[0][::2]).abs().max() > 1e-2  # the adapters matter here
    torch.testing.assert_close(ours[0], ref[0], atol=1e-5, rtol=1e-5)
    for (_, a), (_, b) in zip(ours[1:], ref[1:]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_other_models_go_through_transformers():
    assert "model type 'gpt2'" in static_kv_supported(tiny("gpt2"))
    sliding = tiny("qwen2", use_sliding_window=True, sliding_window=4)
    assert "sliding" in static_kv_supported(sliding, 16)
    for model in (tiny("gpt2"), sliding):
        assert isinstance(make_decoder(model, [3, 4, 5], 16, "cpu"), HFCache)
    # within its window a sliding-window model attends to everything: StaticKV runs it, to the same logits
    wide = tiny("mistral", sliding_window=24)
    assert static_kv_supported(wide, 24) is None and static_kv_supported(wide, 25)
    ids, attn, pos = left_padded(prompts())
    with torch.no_grad():
        decoder = make_decoder(wide, [3, 4, 5], ids.shape[1] + 8, "cpu")
        assert isinstance(decoder, StaticKV)
        a = run(decoder, ids, attn, pos, 2, {})
        b = run(HFCache(wide, ids.shape[1] + 8), ids, attn, pos, 2, {})
    torch.testing.assert_close(a[-1][1], b[-1][1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="StaticKV cannot run"):
        make_decoder(tiny("gpt2"), [3, 4, 5], 16, "cpu", kind="static")


def test_a_model_static_kv_would_get_wrong_is_caught_on_first_use():
    """A user's Qwen2 whose decoder layer is its own (here it halves the MLP's output): the layout
    is Qwen2's, so only the first-use check against transformers' forward can tell."""
    model = tiny("qwen2")
    base = type(model.model.layers[0])

    class HalfMLP(base):
        def forward(self, hidden_states, **kw):
            residual = hidden_states
            h, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kw)
            h = residual + h
            return h + 0.5 * self.mlp(self.post_attention_layernorm(h))

    for layer in model.model.layers:
        layer.__class__ = HalfMLP
    assert static_kv_supported(model) is None
    assert isinstance(make_decoder(model, [3, 4, 5, 6], 16, "cpu"), HFCache)
    assert isinstance(make_decoder(tiny("qwen2"), [3, 4, 5, 6], 16, "cpu"), StaticKV)
    # a llama-typed model whose attention has fused projections: StaticKV cannot read it, and says so
    fused = tiny("llama")
    for layer in fused.model.layers:
        del layer.self_attn.q_proj
    assert isinstance(make_decoder(fused, [3, 4, 5, 6], 16, "cpu"), HFCache)


@pytest.fixture(scope="module")
def engines(qwen2_dir):
    from thinkrl.policy import load_model, load_tokenizer

    tok = load_tokenizer(str(qwen2_dir))
    model = load_model(str(qwen2_dir), torch.device("cpu"))
    return HFEngine(model, tok, "cpu", decoder="static"), HFEngine(model, tok, "cpu", decoder="transformers")


def test_both_decoders_sample_the_same_completions_with_the_trainers_logprobs(engines):
    static, hf = engines
    p = [static.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("What is 347+85?", "check", "A")]
    params = SamplingParams(n=4, temperature=0.8, top_p=0.95, max_new_tokens=16, stop=["</answer>"])
    a = static.generate(p, params, generator=torch.Generator().manual_seed(3))
    b = hf.generate(p, params, generator=torch.Generator().manual_seed(3))
    assert a.completion_ids == b.completion_ids and a.finish_reasons == b.finish_reasons
    assert len(set(map(len, a.completion_ids))) > 1  # rows left the batch at different steps
    batch = SequenceBatch.build(a.prompt_ids, a.completion_ids, static.pad_id, "cpu")
    with torch.no_grad():
        lp = completion_logprobs(static.model, batch, 0.8)
    for i, gen in enumerate(a.logprobs):
        torch.testing.assert_close(lp[i, : len(gen)], torch.tensor(gen), atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.tensor(gen), torch.tensor(b.logprobs[i]), atol=1e-5, rtol=0)


def test_static_kv_in_bfloat16_passes_its_first_use_check_and_stays_close():
    """bf16 (as on a GPU; the CPU runs it too): the cache takes the model's dtype, attention
    weights are computed in float32, and the logits stay within bf16's rounding of transformers'."""
    model = tiny("qwen2").to(torch.bfloat16)
    ids, attn, pos = left_padded(prompts())
    with torch.no_grad():
        ours = run(StaticKV(model, ids.shape[1] + 8), ids, attn, pos, 2, {2: {0, 3}})
        ref = run(HFCache(model, ids.shape[1] + 8), ids, attn, pos, 2, {2: {0, 3}})
    assert ours[0].dtype == torch.bfloat16
    for a, b in [(ours[0], ref[0])] + [(x[1], y[1]) for x, y in zip(ours[1:], ref[1:])]:
        assert (a.float() - b.float()).abs().max() <= 0.05 * b.float().abs().max().clamp(min=1)
    assert isinstance(make_decoder(model, [3, 4, 5, 6], 16, "cpu"), StaticKV)
