"""A plain-PyTorch sampler for Qwen2 / Llama causal LMs: the yardstick for thinkrl's engine.

    .venv/bin/python bench/reference_sampler.py --check [--threads 1]

Not part of thinkrl and independent of its engine: it reads the weights out of a transformers
model and runs the decoder itself. Each prompt is pre-filled once (left-padded batch), its KV
cache repeated G times into one preallocated cache [layers, 2, rows, kv_heads, max_len,
head_dim], then every step decodes one token per unfinished row at temperature T
(torch.multinomial), a row stops at EOS or at the stop token, and finished rows leave the
batch and the cache. `--check` compares its logits, on the prefill and on every decode step,
with the transformers model's own forward over each whole sequence (unpadded, one row at a
time), in float64 (where any difference is the algorithm's: it fails above 1e-9) and in
float32 (where transformers' own cached decoding differs from its full forward by about 1e-5
on the embedded model, whose logits reach 25: it fails above 5e-5).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F


class ReferenceSampler:
    def __init__(self, model):
        cfg, m = model.config, model.model
        rope = getattr(cfg, "rope_parameters", None) or {"rope_type": "default", "rope_theta": cfg.rope_theta}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"only default rotary embeddings are implemented, not {rope}")
        self.H, self.KV = cfg.num_attention_heads, cfg.num_key_value_heads
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        self.eps = cfg.rms_norm_eps
        self.inv_freq = 1.0 / rope["rope_theta"] ** (torch.arange(0, self.D, 2, dtype=torch.int64).float() / self.D)
        bias = lambda lin: lin.bias.detach() if lin.bias is not None else None  # noqa: E731
        cat = lambda *xs: None if xs[0] is None else torch.cat(xs)  # noqa: E731
        self.layers = []
        for layer in m.layers:
            a, p = layer.self_attn, layer.mlp
            self.layers.append(dict(
                ln1=layer.input_layernorm.weight.detach(), ln2=layer.post_attention_layernorm.weight.detach(),
                qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach(),
                qkv_b=cat(bias(a.q_proj), bias(a.k_proj), bias(a.v_proj)),
                o=a.o_proj.weight.detach(), o_b=bias(a.o_proj),
                gu=torch.cat([p.gate_proj.weight, p.up_proj.weight]).detach(),
                gu_b=cat(bias(p.gate_proj), bias(p.up_proj)),
                down=p.down_proj.weight.detach(), down_b=bias(p.down_proj)))
        self.emb, self.norm = m.embed_tokens.weight.detach(), m.norm.weight.detach()
        self.head = model.lm_head.weight.detach()

    def _rms(self, x, w):  # in float32 whatever the model's dtype, as transformers does
        x32 = x.float()
        return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def _rotate(self, x, cos, sin):  # x [n, heads, S, D]; cos, sin [n, 1, S, D]
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    def _forward(self, tok, pos, kv, start, bias):
        """tok, pos [n, S]; writes keys/values at [start, start + S) of kv's rows; bias [n, 1, S, start + S]
        (0 or -inf). Returns logits [n, S, vocab]."""
        n, S = tok.shape
        freqs = pos.float()[..., None] * self.inv_freq
        emb = torch.cat([freqs, freqs], -1)[:, None]
        x = self.emb[tok]
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)  # computed in float32, as transformers does
        g = self.H // self.KV
        for i, w in enumerate(self.layers):
            qkv = F.linear(self._rms(x, w["ln1"]), w["qkv"], w["qkv_b"])
            q, k, v = qkv.split([self.H * self.D, self.KV * self.D, self.KV * self.D], -1)
            q = self._rotate(q.view(n, S, self.H, self.D).transpose(1, 2), cos, sin)
            kv[i, 0, :, :, start:start + S] = self._rotate(k.view(n, S, self.KV, self.D).transpose(1, 2), cos, sin)
            kv[i, 1, :, :, start:start + S] = v.view(n, S, self.KV, self.D).transpose(1, 2)
            keys, vals = kv[i, 0, :, :, :start + S], kv[i, 1, :, :, :start + S]  # [n, KV, T, D]
            q = q.reshape(n, self.KV, g * S, self.D)  # the g query heads sharing a KV head, stacked
            att = (q @ keys.transpose(-1, -2)) * self.D ** -0.5
            att = att.view(n, self.KV, g, S, -1) + bias[:, :, None]
            y = (att.softmax(-1).view(n, self.KV, g * S, -1) @ vals).view(n, self.H, S, self.D)
            x = x + F.linear(y.transpose(1, 2).reshape(n, S, self.H * self.D), w["o"], w["o_b"])
            gate, up = F.linear(self._rms(x, w["ln2"]), w["gu"], w["gu_b"]).chunk(2, -1)
            x = x + F.linear(F.silu(gate) * up, w["down"], w["down_b"])
        return F.linear(self._rms(x, self.norm), self.head)

    @torch.inference_mode()
    def generate(self, prompts, G, max_new_tokens, temperature, stop_ids, generator=None, record=None):
        """G completions per prompt (token lists, a prompt's G contiguous). stop_ids: EOS and stop token
        ids. record: a list to which (rows, logits) of the prefill and of each decode step are appended."""
        B, P, L = len(prompts), max(len(p) for p in prompts), len(self.layers)
        tok = torch.zeros(B, P, dtype=torch.long)
        valid = torch.zeros(B, P + max_new_tokens, dtype=torch.bool)
        for b, p in enumerate(prompts):  # left padding
            tok[b, P - len(p):] = torch.tensor(p)
            valid[b, P - len(p):P] = True
        pos = (valid[:, :P].cumsum(-1) - 1).clamp(min=0)
        allowed = valid[:, None, :P] & torch.ones(P, P, dtype=torch.bool).tril() | torch.eye(P, dtype=torch.bool)
        dt = self.emb.dtype
        bias = torch.zeros(B, 1, P, P, dtype=dt).masked_fill(~allowed[:, None], float("-inf"))
        pre = torch.empty(L, 2, B, self.KV, P, self.D, dtype=dt)
        logits = self._forward(tok, pos, pre, 0, bias)
        if record is not None:
            record.append((torch.arange(B), logits))
        N = B * G
        kv = torch.empty(L, 2, N, self.KV, P + max_new_tokens, self.D, dtype=dt)
        kv[:, :, :, :, :P] = pre.repeat_interleave(G, 2)
        logits, valid = logits[:, -1].repeat_interleave(G, 0), valid.repeat_interleave(G, 0)
        next_pos, rows = pos[:, -1].repeat_interleave(G) + 1, torch.arange(N)
        stops = torch.tensor(sorted(stop_ids))
        out, lengths = torch.zeros(N, max_new_tokens, dtype=torch.long), torch.zeros(N, dtype=torch.long)
        for t in range(max_new_tokens):
            probs = torch.softmax(logits / temperature, -1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            out[rows, t] = nxt
            lengths[rows] += 1
            done = torch.isin(nxt, stops)
            if t == max_new_tokens - 1 or bool(done.all()):
                break
            if bool(done.any()):  # drop finished rows from the batch and the cache
                keep = (~done).nonzero().squeeze(1)
                kv, valid, next_pos, rows, nxt = kv[:, :, keep], valid[keep], next_pos[keep], rows[keep], nxt[keep]
            valid[:, P + t] = True
            bias = torch.zeros(len(rows), 1, 1, P + t + 1, dtype=dt)
            bias.masked_fill_(~valid[:, None, None, :P + t + 1], float("-inf"))
            logits = self._forward(nxt[:, None], next_pos[:, None], kv, P + t, bias)[:, -1]
            next_pos = next_pos + 1
            if record is not None:
                record.append((rows, logits))
        return [out[i, :lengths[i]].tolist() for i in range(N)]


def check(model, prompts, stop_ids, G=2, max_new_tokens=48, seed=0) -> dict:
    """Max |logit difference| between the sampler and the transformers forward over each whole
    sequence (one row, no padding), on the prefill and on every decode step; and how many rows
    stopped before max_new_tokens (those left the batch while others went on)."""
    ref, record = ReferenceSampler(model), []
    comps = ref.generate(prompts, G, max_new_tokens, 1.0, stop_ids, torch.Generator().manual_seed(seed), record)
    worst, _, pre = 0.0, *record[0]
    for b, p in enumerate(prompts):
        full = model(input_ids=torch.tensor([p])).logits[0]
        worst = max(worst, (pre[b, -len(p):] - full).abs().max().item())
    for i, c in enumerate(comps):
        full = model(input_ids=torch.tensor([prompts[i // G] + c])).logits[0]
        for t, (rows, logits) in enumerate(record[1:len(c)]):  # logits of step t predict token t + 1
            j = (rows == i).nonzero().item()
            worst = max(worst, (logits[j] - full[len(prompts[i // G]) + t]).abs().max().item())
    return {"max_abs_diff": worst, "rows_stopped_early": sum(len(c) < max_new_tokens for c in comps),
            "rows": len(comps), "max_abs_logit": pre.abs().max().item()}


TOLERANCE = {"float64": 1e-9, "float32": 5e-5}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare the logits with transformers' forward")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if not args.check:
        ap.print_help()
        return 0
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from second_task import ensure
    from thinkrl.policy import load_tokenizer, resolve_model_path
    from thinkrl.template import render

    second = ensure(threads=args.threads)
    models = {"embedded": (resolve_model_path("embedded"), "r1_zero"), "second": (second.model, second.template)}
    res, ok = {}, True
    for name, (path, template) in models.items():
        tok = load_tokenizer(path)
        qs = [json.loads(line)["question"] for line in open(f"{path}/test.jsonl")][:4]
        prompts = [tok(render(q, template), add_special_tokens=False)["input_ids"] for q in qs]
        prompts[0] = prompts[0][2:]  # prompts of different lengths: left padding is exercised
        stop_ids = {tok.eos_token_id, tok.convert_tokens_to_ids("</answer>")}
        for dtype, tol in TOLERANCE.items():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
            with torch.no_grad():
                res[f"{name}_{dtype}"] = r = check(model, prompts, stop_ids)
            ok &= r["max_abs_diff"] <= tol
    print(json.dumps({"results": res, "tolerance": TOLERANCE, "ok": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
