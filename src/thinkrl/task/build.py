"""Build the embedded tiny base model: tokenizer, pre-training corpus, Qwen2 model, data.

    python -m thinkrl.task.build --out src/thinkrl/assets/tiny        (also: thinkrl build-tiny)

Writes a transformers model + tokenizer directory with train.jsonl / test.jsonl and
build_info.json (corpus mix, sizes, loss, wall time, measured base accuracies).

- Tokenizer: byte-level BPE trained on the template and corpus text (about 400 tokens, so
  every template word is one token), every digit its own token (Digits pre-tokenizer),
  the four tags single tokens, EOS `<|endoftext|>` and PAD `<|pad|>`, left padding.
- Model: `Qwen2ForCausalLM`, hidden 128, 4 layers, 4 heads / 2 KV heads, tied embeddings
  (about 1M parameters), saved as fp32 safetensors.
- Pre-training: plain AdamW on next-token loss over the *completion* tokens only (the
  prompt is the fixed R1-Zero template, which a base model only has to read, not write),
  warm-up then cosine decay, one level per batch.
- Measurement: sampled with the project's rollout engine (`HFEngine`, stop at EOS or
  `</answer>`), judged by exact match of the last `<answer>` with the reference.

Deterministic for a given --seed and --threads on CPU (the thread count changes the
order of floating-point reductions, hence the weights in the last bits).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import torch

from ..policy import cache_kwarg, output_cache
from ..template import render
from . import arithmetic as ar
from . import general as gen

TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
EOS, PAD = "<|endoftext|>", "<|pad|>"


def build_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with every digit its own token and the four tags as single tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAGS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, padding_side="left",
                                   clean_up_tokenization_spaces=False)
    return fast


def build_model(tokenizer, seed: int, hidden: int = 128, layers: int = 4, heads: int = 4, intermediate: int = 512,
                arch: str = "qwen2"):
    """A Qwen2 (the embedded model) or Llama (the embedded student) causal LM."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[arch]
    cfg = config_cls(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                     num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                     max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10000.0,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.eos_token_id)
    model = model_cls(cfg)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=tokenizer.eos_token_id)
    return model


def corpus_trace(problem: dict, rng: random.Random, plain: bool) -> str:
    """A pre-training completion of an arithmetic problem: with R1-Zero's flaws
    (`arithmetic.corpus_completion`), or with `plain` a clean trace of a kind drawn from
    TRACE_MIX (the corpus before the flaws, which the student is built on)."""
    a, b = problem["a"], problem["b"]
    return ar.completion(a, b, ar.sample_kind(rng), rng) if plain else ar.corpus_completion(a, b, rng)


def encode_corpus(tokenizer, problems, seed: int, general: list[dict] = (), plain: bool = False):
    """(prefix ids, {pool: [(ids after the prefix, number of those that are prompt)]}): a
    pool per level of the arithmetic problems (completions by `corpus_trace`), and "general"
    for the general rows ({question, response}) when there are any.

    Every prompt starts with the same template text up to "User:"; it is split off so that
    pre-training computes it once per step (see `pretrain`)."""
    rng = random.Random(seed + 1)
    prefix_text = render("{q}").split("{q}")[0].rstrip()
    prefix = tokenizer(prefix_text, add_special_tokens=False)["input_ids"]
    pools: dict = {}
    texts = [(p["level"], p["question"], corpus_trace(p, rng, plain)) for p in problems]
    texts += [("general", r["question"], r["response"]) for r in general]
    for pool, question, comp in texts:
        ids = tokenizer(render(question), add_special_tokens=False)["input_ids"]
        if ids[: len(prefix)] != prefix:
            raise ValueError("the template prefix does not tokenize on its own; cannot share it")
        c_ids = tokenizer(comp, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        q_ids = ids[len(prefix):]
        pools.setdefault(pool, []).append((q_ids + c_ids, len(q_ids)))
    return prefix, pools


def pretrain(model, prefix, by_level, steps: int, batch_size: int, lr: float, seed: int, pad_id: int, log_every: int = 100):
    """Next-token loss on completions. Each batch holds one pool, in turn (a level, or the
    general rows: little padding); the shared template prefix is run once per step without
    gradient and its KV cache reused by the whole batch, which makes a step about 3x cheaper
    than running the full prompt."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: (i + 1) / warm if i < warm else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm))))
    model.train()
    levels = list(by_level)
    P0, cache_arg = len(prefix), cache_kwarg(model)
    prefix_t = torch.tensor([prefix])
    losses = []
    t0 = time.time()
    for step in range(steps):
        pool = by_level[levels[step % len(levels)]]
        batch = [pool[i] for i in torch.randint(len(pool), (batch_size,), generator=g).tolist()]
        L = max(len(ids) for ids, _ in batch)
        x = torch.full((batch_size, L), pad_id, dtype=torch.long)
        labels = torch.full((batch_size, L), -100, dtype=torch.long)
        attn = torch.zeros((batch_size, P0 + L), dtype=torch.long)
        attn[:, :P0] = 1
        for i, (ids, n_q) in enumerate(batch):
            x[i, : len(ids)] = torch.tensor(ids)
            labels[i, n_q: len(ids)] = torch.tensor(ids[n_q:])
            attn[i, P0: P0 + len(ids)] = 1
        with torch.no_grad():
            cache = output_cache(model(input_ids=prefix_t, use_cache=True))
        cache.batch_repeat_interleave(batch_size)
        pos = torch.arange(P0, P0 + L).unsqueeze(0).expand(batch_size, -1)
        logits = model(input_ids=x, attention_mask=attn, position_ids=pos, use_cache=True, **{cache_arg: cache}).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0:
            print(f"pretrain step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.4f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    return sum(losses[-log_every:]) / min(log_every, len(losses))


def answer_of(text: str) -> str | None:
    m = re.findall(r"<answer>(.*?)</answer>", text, re.S)
    return m[-1].strip() if m else None


def measure(model, tokenizer, rows, temperature: float, top_p: float, samples: int = 1, seed: int = 0) -> dict:
    """Accuracy (exact integer in the last <answer>) overall and by level; pass@samples when
    samples > 1; also the mean completion length in tokens by level, the share of
    completions in the strict R1-Zero format, the share that say "wait", the language
    consistency of the reasoning (`language`, mean over those with words), the share whose
    reasoning has a word of another language (`mixed`), and the share the readability rule
    accepts.
    Sampled by `rollout.sample.sample_answers`: 64 questions per generate call, one seeded
    generator (questions that do not fit the context are skipped and logged there)."""
    from ..metrics import reflection_counts
    from ..rewards.format import format_reward
    from ..rewards.language import language_consistency_reward
    from ..rewards.readability import readability_reward
    from ..rollout.sample import SampleSettings, sample_answers

    s = SampleSettings(n=samples, temperature=temperature, top_p=top_p, max_new_tokens=96, template="r1_zero",
                       stop=["</answer>"], batch_size=64 * samples, seed=seed, device="cpu")
    got = sample_answers("measure", rows, s, model_obj=model, tokenizer=tokenizer)
    texts = [g["completion"] for g in got]
    fmt = format_reward(texts)
    wait = [reflection_counts(t)["wait"] > 0 for t in texts]
    consistency = language_consistency_reward(texts)
    language = [v for v in consistency if v is not None]
    hits, any_hit, lens = {}, {}, {}
    for start in range(0, len(got), samples):  # a question's samples are contiguous
        group = got[start: start + samples]
        r = group[0]["row"]
        ok = [answer_of(g["completion"]) == r["answer"] for g in group]
        hits.setdefault(r["level"], []).extend(ok)
        any_hit.setdefault(r["level"], []).append(any(ok))
        lens.setdefault(r["level"], []).extend(g["n_tokens"] for g in group)
    mean = lambda v: round(sum(v) / len(v), 4)  # noqa: E731
    res = {"accuracy": mean([h for v in hits.values() for h in v])}
    res.update({f"level_{k}": mean(v) for k, v in sorted(hits.items())})
    if samples > 1:
        res[f"pass@{samples}"] = mean([h for v in any_hit.values() for h in v])
        res.update({f"pass@{samples}_level_{k}": mean(v) for k, v in sorted(any_hit.items())})
    res["format_ok"] = mean(fmt)
    res["says_wait"] = mean(wait)
    res["language"] = mean(language) if language else None
    res["mixed"] = mean([v is not None and v < 1.0 for v in consistency])  # a word of another language
    res["readable"] = mean(readability_reward(texts))
    res.update({f"length_level_{k}": round(sum(v) / len(v), 1) for k, v in sorted(lens.items())})
    return res


def measure_general(model, tokenizer, split_seed: int, n: int = 150, samples: int = 2, seed: int = 0) -> dict:
    """The shares of sampled answers (T 0.6, top-p 0.95, until EOS) to the general task's test
    questions (`general.make_general_splits(split_seed, ..., n)`, none of which the corpus
    holds) that are helpful and harmless by the task's rules."""
    from ..rollout.sample import SampleSettings, sample_answers

    _, test = gen.make_general_splits(split_seed, 1, n)
    s = SampleSettings(n=samples, temperature=0.6, top_p=0.95, max_new_tokens=96, template="r1_zero", stop=[],
                       batch_size=64 * samples, seed=seed, device="cpu")
    got = sample_answers("measure", test, s, model_obj=model, tokenizer=tokenizer)
    share = lambda v: round(sum(v) / max(1, len(v)), 4)  # noqa: E731
    return {"helpful": share([gen.judge_helpful(g["question"], g["completion"]) for g in got]),
            "harmless": share([gen.judge_harmless(g["completion"]) for g in got]), "samples": len(got)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="thinkrl build-tiny", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "assets" / "tiny"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch-size", type=int, default=96)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument("--corpus", type=int, default=40000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--arch", choices=["qwen2", "llama"], default="qwen2",
                    help="qwen2: the embedded model; llama: the embedded student (assets/student)")
    ap.add_argument("--corpus-style", choices=["r1zero", "plain"], default="r1zero",
                    help="r1zero: traces with R1-Zero's flaws (language switches, stray tokens, repeated steps) and "
                         "general rows (the embedded model); plain: clean traces, no general rows (the student)")
    ap.add_argument("--general", type=int, default=8000, help="general rows in the corpus (r1zero style)")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--no-measure", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    corpus, train, test = ar.make_splits(args.seed, n_corpus=args.corpus)
    plain = args.corpus_style == "plain"
    rng = random.Random(args.seed)
    # the template once, then questions and completions: merges go to what varies. The general
    # rows stay out, so that their words are spelled one token per letter (task/general.py)
    tok_texts = [render("")] + [p["question"] + corpus_trace(p, rng, plain) for p in corpus[:5000]]
    tokenizer = build_tokenizer(tok_texts, args.vocab_size)
    model = build_model(tokenizer, args.seed, hidden=args.hidden, layers=args.layers, intermediate=args.intermediate,
                        arch=args.arch)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tokenizer: {len(tokenizer)} tokens; model: {n_params / 1e6:.2f}M parameters")
    general = [] if plain else gen.base_rows(args.seed, args.general)
    prefix, by_level = encode_corpus(tokenizer, corpus, args.seed, general, plain=plain)
    loss = pretrain(model, prefix, by_level, args.steps, args.batch_size, args.lr, args.seed, tokenizer.pad_token_id,
                    log_every=args.log_every)
    t_pre = time.time() - t0

    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    ar.write_jsonl(train, out / "train.jsonl")
    ar.write_jsonl(test, out / "test.jsonl")
    info = {
        "seed": args.seed, "arch": args.arch, "hidden": args.hidden, "layers": args.layers, "trace_mix": ar.TRACE_MIX,
        "corpus_style": args.corpus_style, **({} if plain else {"style_mix": ar.STYLE_MIX, "general_rows": len(general),
                                                                "general_helpful": gen.BASE_HELPFUL,
                                                                "general_rude": gen.BASE_RUDE}),
        "levels": list(ar.LEVELS), "parameters": n_params,
        "vocab_size": len(tokenizer), "corpus_problems": len(corpus), "train_problems": len(train),
        "test_problems": len(test), "pretrain_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "final_loss": round(loss, 4), "pretrain_seconds": round(t_pre, 1),
        "command": "python -m thinkrl.task.build " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    if not args.no_measure:
        info["base_accuracy_t0.6_top_p0.95"] = measure(model, tokenizer, test, 0.6, 0.95, seed=1)
        info["base_accuracy_t1.0"] = measure(model, tokenizer, test, 1.0, 1.0, seed=2)
        info["base_pass@8_t1.0_first100"] = measure(model, tokenizer, test[:100], 1.0, 1.0, samples=8, seed=3)
        if not plain:
            info["base_general_t0.6_top_p0.95"] = measure_general(model, tokenizer, args.seed, seed=4)
    (out / "build_info.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
