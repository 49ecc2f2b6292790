"""Gradient (activation) checkpointing: the same log-probs, losses and gradients as without it
(GRPO through `completion_logprobs`, whose shared-prompt path it turns off; SFT through
`batch_nll`, whose shared prefix it turns off), the same weights after GRPO steps, the same
samples from the rollout engine, and less memory saved for the backward pass."""

import copy
import json
import random

import pytest
import torch

from thinkrl.config import load_config
from thinkrl.objective import Normaliser, grpo_loss
from thinkrl.policy import (SequenceBatch, checkpointing_active, completion_logprobs, length_buckets, enable_gradient_checkpointing,
                            load_model, load_tokenizer)
from thinkrl.rollout import SamplingParams, make_engine
from thinkrl.task.arithmetic import completion, make_problem
from thinkrl.template import render
from thinkrl.train.grpo import GRPOTrainer
from thinkrl.train.sft import SFTTrainer, batch_nll, load_sft_config
from thinkrl.train.sft_data import encode_prompt_response, pad_batch

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def is_checkpointing(model) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def checkpointed_copy(model):
    other = enable_gradient_checkpointing(copy.deepcopy(model))
    assert is_checkpointing(other) and not is_checkpointing(model)
    return other


class Watch:
    """What a forward+backward did: how often the first layer's MLP was entered (twice with
    checkpointing: once more when the backward replays the layer; a pre-hook, as the replay
    stops once it has what the backward needs) and the bytes autograd kept for the backward
    outside checkpointed regions."""

    def __init__(self, model):
        self.model, self.mlp_calls, self.saved_bytes = model, 0, 0

    def __enter__(self):
        self.hook = self.model.model.layers[0].mlp.register_forward_pre_hook(lambda *a: self._count())
        self.saved = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda x: x)
        self.saved.__enter__()
        return self

    def _count(self):
        self.mlp_calls += 1

    def _pack(self, t):
        self.saved_bytes += t.numel() * t.element_size()
        return t

    def __exit__(self, *exc):
        self.saved.__exit__(*exc)
        self.hook.remove()


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a: dict, b: dict, rtol: float = 1e-5):
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        scale = float(a[name].abs().max())
        assert scale > 0, name  # every parameter gets a gradient: a comparison of zeros would prove nothing
        err = float((a[name] - b[name]).abs().max())
        assert err <= rtol * scale, (name, err, scale)


def grouped_batch(tok, groups: int = 3, G: int = 4, seed: int = 0) -> SequenceBatch:
    """R1-Zero prompts of different lengths (left padding), G completions of each, of
    different lengths (right padding), the rollout layout the GRPO trainer builds."""
    rng = random.Random(seed)
    prompts, comps, gids = [], [], []
    for g in range(groups):
        p = make_problem(rng, 1 + g)
        ids = tok(render(p["question"], "r1_zero", tok), add_special_tokens=False)["input_ids"]
        for j in range(G):
            kind = ("correct", "buggy", "reflective", "correct")[j]
            c = tok(completion(p["a"], p["b"], kind), add_special_tokens=False)["input_ids"]
            prompts.append(ids)
            comps.append(c[: len(c) - 3 * j] + [tok.eos_token_id])
            gids.append(g)
    return SequenceBatch.build(prompts, comps, tok.pad_token_id, CPU, group_ids=gids)


# ---------------------------------------------------------------------------- GRPO


def test_grpo_loss_gradient_equals_the_shared_prompt_forward():
    tok, model = load_tokenizer("embedded"), load_model("embedded", CPU)
    model.train()
    ckpt = checkpointed_copy(model)
    batch = grouped_batch(tok)
    assert batch.prompt_len > 80 and len(torch.unique(batch.group_ids)) < len(batch)  # prompts are shared
    adv = torch.linspace(-1.5, 1.5, len(batch))
    with torch.no_grad():  # π_old: without gradient the checkpointed model still shares prompts (and its cache)
        assert not checkpointing_active(ckpt)
        old = completion_logprobs(ckpt, batch, temperature=0.9)
    norm, results = Normaliser.of(batch.completion_mask), []
    for m in (model, ckpt):
        m.zero_grad(set_to_none=True)
        with Watch(m) as w:
            assert checkpointing_active(m) == (m is ckpt)
            logp = completion_logprobs(m, batch, temperature=0.9, share_prompts=True)
            loss, _ = grpo_loss(logp, old - 0.05 * batch.completion_mask, adv, batch.completion_mask, norm=norm,
                                aggregation="dr_grpo")
            loss.backward()
        results.append((logp.detach(), loss.item(), grads(m), w))
    (lp_a, loss_a, g_a, w_a), (lp_b, loss_b, g_b, w_b) = results
    mask = batch.completion_mask
    torch.testing.assert_close(lp_b[mask], lp_a[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(old[mask], lp_a[mask], rtol=1e-5, atol=1e-5)
    assert torch.equal(lp_b[mask], old[mask])  # the same arithmetic with and without gradient: ρ = 1 exactly
    assert loss_b == pytest.approx(loss_a, rel=1e-5) and abs(loss_a) > 1e-3
    assert_same_grads(g_a, g_b)
    # the prompt gets its gradient through the shared KV cache in one, through each row in the other:
    # the embedding rows of tokens only prompts hold must agree too (they are compared above) and be non-zero
    prompt_only = set(batch.input_ids[:, : batch.prompt_len].flatten().tolist()) - set(
        batch.completion_ids.flatten().tolist()) - {tok.pad_token_id}
    emb = "model.embed_tokens.weight"
    assert prompt_only and all(float(g_b[emb][t].abs().max()) > 0 for t in prompt_only)
    # checkpointing really ran: the completions' layers were replayed in the backward, and less was kept for it
    k = len(length_buckets(mask.sum(-1).tolist()))  # completions run in groups of similar length
    assert k > 1 and (w_a.mlp_calls, w_b.mlp_calls) == (1 + k, 1 + 2 * k)  # prompts, completions (and their replay)
    assert w_b.saved_bytes < 0.5 * w_a.saved_bytes, (w_a.saved_bytes, w_b.saved_bytes)


def test_without_gradient_the_checkpointed_model_keeps_sharing_prompts():
    tok, model = load_tokenizer("embedded"), load_model("embedded", CPU)
    model.train()
    ckpt, batch = checkpointed_copy(model), grouped_batch(tok, groups=2)
    with torch.no_grad(), Watch(ckpt) as w:
        shared = completion_logprobs(ckpt, batch)
        plain = completion_logprobs(ckpt, batch, share_prompts=False)
    k = len(length_buckets(batch.completion_mask.sum(-1).tolist()))
    assert w.mlp_calls == 1 + k + 1  # prompts, then completions over their cache (by length), then the plain forward
    mask = batch.completion_mask
    torch.testing.assert_close(shared[mask], plain[mask], rtol=1e-5, atol=1e-5)


def test_grpo_steps_give_the_same_weights_with_checkpointing(tmp_path):
    rng, data = random.Random(5), tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": p["question"], "answer": str(p["a"] + p["b"])}) + "\n"
                            for p in (make_problem(rng, 1 + i % 3) for i in range(16))))
    runs = {}
    for on in (False, True):
        cfg = load_config(None, [f"data.train={data}", "train.steps=2", "train.prompts_per_step=4", "rollout.group_size=4",
                                 "rollout.max_new_tokens=48", "objective.beta=0.04", "objective.mu=2",
                                 "train.micro_batch_size=8", "optim.lr=1e-4", "data.eval=none", "eval.every=0",
                                 "train.save_every=0", "run.progress=false", "run.seed=3",
                                 f"train.gradient_checkpointing={on}"])
        trainer = GRPOTrainer(cfg, tmp_path / f"run_{on}")
        assert is_checkpointing(trainer.policy) == on
        samples, real_generate = [], trainer.engine.generate
        trainer.engine.generate = lambda *a, **k: samples.append(real_generate(*a, **k)) or samples[-1]
        for _ in range(2):
            trainer.train_step()
        runs[on] = ({n: p.detach().clone() for n, p in trainer.policy.named_parameters()}, samples)
    (a, s_a), (b, s_b) = runs[False], runs[True]
    assert len(s_a) == 2 and [s.completion_ids for s in s_a] == [s.completion_ids for s in s_b]
    initial = load_model("embedded", CPU).state_dict()
    assert max(float((a[n] - initial[n]).abs().max()) for n in a) > 1e-4  # it learned: four updates of lr 1e-4
    for name in a:  # the same arithmetic as without checkpointing (read_cache), so the same weights
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------------------- SFT


def sft_samples(tok, n: int = 6):
    rng = random.Random(4)
    probs = [make_problem(rng, 1 + i % 4) for i in range(n)]
    return encode_prompt_response([p["question"] for p in probs], [completion(p["a"], p["b"], "reflective")
                                                                   for p in probs], tok, "r1_zero")


def test_sft_loss_gradient_equals_the_shared_prefix_forward():
    tok, model = load_tokenizer("embedded"), load_model("embedded", CPU)
    model.train()
    ckpt = checkpointed_copy(model)
    batch = pad_batch(sft_samples(tok), tok.pad_token_id, share_prefix=True)
    assert batch.prefix_len > 80
    results = []
    for m in (model, ckpt):
        m.zero_grad(set_to_none=True)
        with Watch(m) as w:
            nll = batch_nll(m, batch)
            nll.backward()
        results.append((nll.item(), grads(m), w))
    (nll_a, g_a, w_a), (nll_b, g_b, w_b) = results
    assert nll_b == pytest.approx(nll_a, rel=1e-5)
    assert_same_grads(g_a, g_b)
    assert (w_a.mlp_calls, w_b.mlp_calls) == (2, 3)  # prefix, rows (and their replay)
    assert w_b.saved_bytes < 0.5 * w_a.saved_bytes, (w_a.saved_bytes, w_b.saved_bytes)
    model.eval(), ckpt.eval()
    with torch.no_grad():  # held-out loss: no gradient, the prefix is shared again
        assert batch_nll(ckpt, batch).item() == pytest.approx(batch_nll(model, batch).item(), rel=1e-6)


def test_sft_trainer_steps_give_the_same_weights_with_checkpointing(tmp_path):
    rng = random.Random(2)
    probs = [make_problem(rng, 1 + i % 4) for i in range(8)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": p["question"], "response": completion(p["a"], p["b"], "correct")})
                            + "\n" for p in probs))
    weights = {}
    for on in (False, True):
        cfg = load_sft_config(None, [f"data.train={data}", "train.epochs=1", "train.batch_size=4",
                                     "train.micro_batch_size=2", "optim.lr=1e-3", "run.progress=false",
                                     "train.save_every=0", f"train.gradient_checkpointing={on}"])
        trainer = SFTTrainer(cfg, tmp_path / f"run_{on}")
        assert is_checkpointing(trainer.model) == on
        trainer.run()
        weights[on] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    initial = load_model("embedded", CPU).state_dict()
    assert max(float((weights[False][n] - initial[n]).abs().max()) for n in weights[False]) > 1e-3
    for name, p in weights[False].items():  # the shared prefix, checkpointed: the same arithmetic
        torch.testing.assert_close(weights[True][name], p, rtol=0, atol=0, msg=name)


def test_on_policy_distillation_steps_give_the_same_weights_with_checkpointing(tmp_path):
    from thinkrl.distill.onpolicy import OnPolicyDistiller
    from thinkrl.distill.run import load_distill_config
    from thinkrl.task.build import build_model

    tok, student = load_tokenizer("embedded"), tmp_path / "student"
    build_model(tok, 0, hidden=32, layers=2, heads=4, intermediate=64, arch="llama").save_pretrained(student)
    tok.save_pretrained(student)
    weights = {}
    for on in (False, True):
        cfg = load_distill_config(None, ["mode=on_policy", f"student.path={student}", "teacher.path=embedded",
                                         "on_policy.prompts_per_step=4", "on_policy.samples_per_prompt=2",
                                         "on_policy.max_new_tokens=32", "on_policy.micro_batch_size=4",
                                         "on_policy.lr=1e-3", "data.max_prompts=16", "eval.size=0",
                                         "run.progress=false", f"on_policy.gradient_checkpointing={on}"])
        distiller = OnPolicyDistiller(cfg, tmp_path / f"run_{on}")
        assert is_checkpointing(distiller.student) == on and not is_checkpointing(distiller.teacher)
        for _ in range(2):
            distiller.train_step()
        weights[on] = {n: p.detach().clone() for n, p in distiller.student.named_parameters()}
    initial = load_model(str(student), CPU).state_dict()
    assert max(float((weights[False][n] - initial[n]).abs().max()) for n in weights[False]) > 1e-3
    for name, p in weights[False].items():  # the plain forward, checkpointed: the same arithmetic
        torch.testing.assert_close(weights[True][name], p, rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------------------- sampling and settings


def test_the_engine_samples_the_same_with_checkpointing_on():
    tok, model = load_tokenizer("embedded"), load_model("embedded", CPU)
    model.train()  # as during GRPO
    ckpt = checkpointed_copy(model)
    rng = random.Random(1)
    prompts = [tok(render(make_problem(rng, 2)["question"], "r1_zero", tok), add_special_tokens=False)["input_ids"]
               for _ in range(3)]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=24, stop=["</answer>"])
    out = []
    for m in (model, ckpt):
        engine = make_engine("hf", m, tok, CPU)
        engine.generate(prompts, SamplingParams(max_new_tokens=1))  # the decoder's first-use check, unwatched
        calls = []  # forwards through the whole model: the LM head runs once in each
        hook = m.lm_head.register_forward_pre_hook(lambda *a: calls.append(1))
        try:
            ro = engine.generate(prompts, params, generator=torch.Generator().manual_seed(9))
        finally:
            hook.remove()
        assert m.training  # given back in training mode
        out.append((ro, len(calls)))
    (a, calls_a), (b, calls_b) = out
    assert a.completion_ids == b.completion_ids and a.logprobs == b.logprobs and a.texts == b.texts
    assert calls_a == calls_b == max(len(c) for c in a.completion_ids)  # one forward per token: the KV cache is used
    assert len({tuple(c) for c in a.completion_ids}) > 3  # sampled, not one repeated answer


def test_the_setting_exists_in_every_loop_and_a_model_without_support_is_refused():
    from thinkrl.distill.run import load_distill_config

    assert load_config(None, ["train.gradient_checkpointing=true"]).train.gradient_checkpointing
    assert load_sft_config(None, ["data.train=x.jsonl", "train.gradient_checkpointing=true"]).train.gradient_checkpointing
    cfg = load_distill_config(None, ["student.path=embedded-student", "sft.train.gradient_checkpointing=true",
                                     "on_policy.gradient_checkpointing=true"])
    assert cfg.sft.train.gradient_checkpointing and cfg.on_policy.gradient_checkpointing
    with pytest.raises(ValueError, match="on_policy.gradient_checkpointing=false"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2), "on_policy.gradient_checkpointing")
