"""A second benchmark task, unlike the embedded one the way another user's task would be.

    .venv/bin/python bench/second_task.py [--cache DIR] [--seed 0] [--threads 1]

Column subtraction with borrowing, asked in a short prompt ("Q: what is 734 minus 258?\\nA:",
10-13 tokens) and answered in at most ~35 tokens:

    correct:            <think>14-8=6 13-5-1=7 7-2-1=4</think> <answer>476</answer>
    smaller-from-larger <think>8-4=4 5-3=2 7-2=5</think> <answer>524</answer>
    forgotten payback   <think>14-8=6 13-5=8 7-2=5</think> <answer>586</answer>

Each column is written `[1]top-bottom[-1]=digit`: a leading 1 when the column borrows, `-1`
when the column to its right borrowed from it. The base model is pre-trained on a mix of the
correct procedure, two classic wrong ones and off-format answers (`MIX`), so it is right on
part of the questions at temperature 1 and GRPO has something to select.

Its own tokenizer (BPE over a sentencepiece-style `▁` pre-tokenizer, digits split, about 70
tokens, `</s>` EOS, `<pad>` PAD, the four tags single tokens) and its own model (Llama, hidden
128, 3 layers, 4 heads / 1 KV head, untied embeddings, 0.55M parameters). Built
deterministically from the seed into a cache directory and rebuilt only when missing or when
the recorded settings or seed differ.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from thinkrl.task.arithmetic import make_splits as split_problems, write_jsonl

DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache" / "second_task"
TEMPLATE = "Q: what is {prompt}?\nA:"
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
MIX = {"correct": 0.4, "smaller_from_larger": 0.3, "no_payback": 0.15, "off_format": 0.15}
# digits of the top number, (smallest, largest) digits of the bottom number, per level
LEVELS = {1: (2, 1, 2), 2: (3, 2, 2), 3: (3, 3, 3)}
# everything the build depends on; a cache whose info.json records other settings is rebuilt
SETTINGS = {
    "version": 1, "template": TEMPLATE, "mix": MIX, "levels": {str(k): v for k, v in LEVELS.items()},
    "n_train": 4000, "n_test": 300, "n_corpus": 30000, "vocab_size": 96,
    "arch": "llama", "hidden": 128, "intermediate": 352, "layers": 3, "heads": 4, "kv_heads": 1, "tied": False,
    "pretrain_steps": 900, "batch_size": 32, "lr": 3e-3, "max_new_tokens": 48,
}


@dataclass
class SecondTask:
    model: str  # directory with the model and tokenizer
    train: str  # path of train.jsonl
    test: str  # path of test.jsonl
    template: str  # a format string with {prompt} (thinkrl.template.render)
    max_new_tokens: int = 48
    stop: list[str] = field(default_factory=lambda: ["</answer>"])

    def overrides(self) -> list[str]:
        """`thinkrl zero` overrides that run on this task (the template JSON-quoted: YAML reads it back)."""
        return [f"model.path={self.model}", f"data.train={self.train}", f"data.eval={self.test}",
                f"model.template={json.dumps(self.template)}", f"rollout.max_new_tokens={self.max_new_tokens}",
                f"eval.max_new_tokens={self.max_new_tokens}", f"rollout.stop={json.dumps(self.stop)}"]


def needs_borrow(a: int, b: int) -> bool:
    while b:
        if a % 10 < b % 10:
            return True
        a, b = a // 10, b // 10
    return False


def make_problem(rng: random.Random, level: int) -> dict:
    """a - b with a > b and at least one borrow."""
    da, lo, hi = LEVELS[level]
    while True:
        a = rng.randrange(10 ** (da - 1), 10 ** da)
        db = rng.randint(lo, hi)
        b = rng.randrange(10 ** (db - 1), 10 ** db)
        if b < a and needs_borrow(a, b):
            return {"question": f"{a} minus {b}", "answer": str(a - b), "level": level, "a": a, "b": b}


def working(a: int, b: int, kind: str) -> tuple[str, str]:
    """(the columns inside <think>, the answer) of one procedure, right to left."""
    ta, tb = str(a)[::-1], str(b)[::-1]
    steps, digits, borrow_in = [], [], 0
    for i in range(len(ta)):
        x, y = int(ta[i]), int(tb[i]) if i < len(tb) else 0
        if kind == "smaller_from_larger":
            d = abs(x - y)
            steps.append(f"{max(x, y)}-{min(x, y)}={d}")
        else:
            paid = borrow_in if kind == "correct" else 0
            out = int(x - y - paid < 0)
            d = 10 * out + x - y - paid
            steps.append(f"{'1' if out else ''}{x}-{y}{'-1' if paid else ''}={d}")
            borrow_in = out
        digits.append(d)
    return " ".join(steps), "".join(map(str, reversed(digits))).lstrip("0") or "0"


def completion(a: int, b: int, kind: str, rng: random.Random) -> str:
    """What the model writes after "A:"."""
    if kind == "off_format":
        think, ans = working(a, b, rng.choice(["correct", "smaller_from_larger"]))
        return rng.choice([f" {think} <answer>{ans}</answer>", f" <think>{think}</think> {ans}",
                           f" {think} so the answer is {ans}"])
    think, ans = working(a, b, kind)
    return f" <think>{think}</think> <answer>{ans}</answer>"


def make_splits(seed: int, n_train: int, n_test: int, n_corpus: int):
    """(corpus, train, test) problems, balanced over levels; test questions in neither other:
    the embedded task's split (`thinkrl.task.arithmetic.make_splits`) over this task's problems."""
    return split_problems(seed, n_train, n_test, n_corpus, make=make_problem, levels=sorted(LEVELS))


def build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                        special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAGS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", padding_side="left", clean_up_tokenization_spaces=False)


def build_model(tok, s: dict, seed: int):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                      max_position_embeddings=128, tie_word_embeddings=s["tied"], rope_theta=10000.0,
                      rms_norm_eps=1e-5, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               bos_token_id=tok.bos_token_id)
    return model


def pretrain(model, examples: dict, s: dict, seed: int, pad_id: int) -> float:
    """Next-token loss on completion tokens; one level per batch (little padding), AdamW with
    warm-up and cosine decay. examples: {level: [(ids, number of prompt ids)]}. Returns the mean
    loss of the last 50 steps."""
    g = torch.Generator().manual_seed(seed)
    steps, bs = s["pretrain_steps"], s["batch_size"]
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"], betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (i + 1) / warm if i < warm else
                                              0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (i - warm) / (steps - warm))))
    levels, losses = sorted(examples), []
    model.train()
    for step in range(steps):
        pool = examples[levels[step % len(levels)]]
        batch = [pool[i] for i in torch.randint(len(pool), (bs,), generator=g).tolist()]
        L = max(len(ids) for ids, _ in batch)
        x = torch.full((bs, L), pad_id, dtype=torch.long)
        labels = torch.full((bs, L), -100, dtype=torch.long)
        attn = torch.zeros((bs, L), dtype=torch.long)
        for i, (ids, n_prompt) in enumerate(batch):
            x[i, :len(ids)] = torch.tensor(ids)
            labels[i, n_prompt:len(ids)] = x[i, n_prompt:len(ids)]
            attn[i, :len(ids)] = 1
        logits = model(input_ids=x, attention_mask=attn).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return sum(losses[-50:]) / len(losses[-50:])


def measure(model, tok, rows: list[dict], temperature: float, seed: int) -> dict:
    """Held-out accuracy and format rate, graded by thinkrl's own `accuracy` and `format`
    rewards, on completions sampled by thinkrl's engine (top-p 1, stop `</answer>`)."""
    from thinkrl.rewards import get_reward
    from thinkrl.rollout.engine import SamplingParams
    from thinkrl.rollout.hf import HFEngine
    from thinkrl.template import render

    engine = HFEngine(model, tok, "cpu")
    params = SamplingParams(n=1, temperature=temperature, max_new_tokens=SETTINGS["max_new_tokens"], stop=["</answer>"])
    prompts = [tok(render(r["question"], TEMPLATE), add_special_tokens=False)["input_ids"] for r in rows]
    gen = torch.Generator().manual_seed(seed)
    texts, n_tok = [], []
    for i in range(0, len(prompts), 100):
        ro = engine.generate(prompts[i:i + 100], params, generator=gen)
        texts += ro.texts
        n_tok += [len(c) for c in ro.completion_ids]
    acc = get_reward("accuracy")(texts, answer=[r["answer"] for r in rows], workers=0)
    fmt = get_reward("format")(texts)
    by_level: dict[int, list[float]] = {}
    for r, a in zip(rows, acc):
        by_level.setdefault(r["level"], []).append(float(a))
    mean = lambda v: round(sum(v) / len(v), 4)  # noqa: E731
    return {"accuracy": mean([float(a) for a in acc]), **{f"level_{k}": mean(v) for k, v in sorted(by_level.items())},
            "format_ok": mean([float(f) for f in fmt]), "mean_completion_tokens": round(sum(n_tok) / len(n_tok), 1),
            "max_completion_tokens": max(n_tok)}


def build(out: Path, seed: int, threads: int) -> dict:
    t0 = time.time()
    s = SETTINGS
    corpus, train, test = make_splits(seed, s["n_train"], s["n_test"], s["n_corpus"])
    rng = random.Random(seed + 1)
    kinds = lambda: rng.choices(list(MIX), weights=list(MIX.values()))[0]  # noqa: E731
    pairs = [(TEMPLATE.replace("{prompt}", p["question"]), completion(p["a"], p["b"], kinds(), rng), p["level"])
             for p in corpus]
    tok = build_tokenizer([p + c for p, c, _ in pairs[:5000]], s["vocab_size"])
    p_all = tok([p for p, _, _ in pairs], add_special_tokens=False)["input_ids"]
    c_all = tok([c for _, c, _ in pairs], add_special_tokens=False)["input_ids"]
    examples: dict[int, list] = {}
    for p_ids, c_ids, (_, _, level) in zip(p_all, c_all, pairs):
        examples.setdefault(level, []).append((p_ids + c_ids + [tok.eos_token_id], len(p_ids)))
    model = build_model(tok, s, seed)
    loss = pretrain(model, examples, s, seed, tok.pad_token_id)
    t_pre = time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    write_jsonl(train, out / "train.jsonl")
    write_jsonl(test, out / "test.jsonl")
    lens = [len(tok(TEMPLATE.replace("{prompt}", r["question"]), add_special_tokens=False)["input_ids"]) for r in test]
    info = {"settings": s, "seed": seed, "threads": threads, "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tok), "prompt_tokens_min_max": [min(lens), max(lens)],
            "final_loss": round(loss, 4), "pretrain_seconds": round(t_pre, 1),
            "base_t1.0": measure(model, tok, test, 1.0, seed=1), "base_t0.6": measure(model, tok, test, 0.6, seed=2)}
    info["build_seconds"] = round(time.time() - t0, 1)
    (out / "info.json").write_text(json.dumps(info, indent=2))
    return info


def ensure(cache: str | None = None, seed: int = 0, threads: int = 1) -> SecondTask:
    """The task in `cache` (default bench/.cache/second_task), built there first if missing or
    built with other settings or seed (about 2 minutes on one thread)."""
    out = Path(cache) if cache else DEFAULT_CACHE
    info_path = out / "info.json"
    fresh = False
    if info_path.exists():
        info = json.loads(info_path.read_text())
        fresh = info.get("settings") == json.loads(json.dumps(SETTINGS)) and info.get("seed") == seed
    if not fresh:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            build(out, seed, threads)
        finally:
            torch.set_num_threads(before)
    return SecondTask(model=str(out), train=str(out / "train.jsonl"), test=str(out / "test.jsonl"),
                      template=TEMPLATE, max_new_tokens=SETTINGS["max_new_tokens"], stop=["</answer>"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=None, help=f"directory (default {DEFAULT_CACHE})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    task = ensure(args.cache, args.seed, args.threads)
    print(Path(task.model, "info.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
