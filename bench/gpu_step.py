"""One GPU check of thinkrl's GRPO step at Qwen2.5-0.5B size, full fine-tuning and LoRA: step
time split into sampling, scoring and update, rollout tokens/s, peak GPU memory and the
update's model FLOPs utilisation (MFU), as JSON.

    PYTHONPATH=src python bench/gpu_step.py --out $OUT/gpu_step.json   # on the device machine
    PYTHONPATH=src python bench/gpu_step.py --check                    # imports, configs: seconds
    .venv/bin/python bench/gpu_step.py --tiny --threads 1               # CPU smoke test, < 1 min

Model: randomly initialised, shaped as in the public config.json of Qwen/Qwen2.5-0.5B (hidden
896, 24 layers, 14 heads, 2 key/value heads, intermediate 4864, vocab 151936, tied embeddings,
rope_theta 1e6, max_position_embeddings 32768, rms_norm_eps 1e-6, bos/eos 151643): 494,032,768
parameters, 357,898,112 outside the embedding. Nothing is downloaded. Tokenizer: built here, a
`tokenizers` WordLevel vocabulary over all 151936 ids (base-36 words such as "3f2a";
<|endoftext|> at Qwen's id 151643 is EOS and pad), whitespace-split, so every sampled id
decodes. Prompts: 100 such words, in a JSONL in a temporary directory (template none). A random
model writes noise, so there is no stop string (512 tokens unless EOS is sampled, about 1 in
150k) and the reward is the share of digit characters, different for nearly any two samples:
every sample gets a non-zero advantage and is trained on.

Each variant runs thinkrl's own `GRPOTrainer(load_config(None, overrides)).run()` in a fresh
subprocess (its peak memory its own): G 16 x 8 prompts = 128 completions, 512 new tokens,
model.dtype=auto (fp32 weights, bf16 autocast on CUDA), micro-batches of 16, beta 0, mu 1,
data.eval=none, train.profile=true (CUDA synchronised between phases), 1 warm-up + 3 measured
steps, medians. `full` trains every weight; `lora` model.lora.r=16, alpha 32, all-linear
(skipped, saying so, without PEFT). From RUN/metrics.jsonl: sampling = timing/generate,
scoring = timing/reward, update = timing/logprobs + timing/update (profile/forward_backward and
profile/optimizer too); rollout tokens/s = completion_len x 128 / timing/generate. Memory:
torch.cuda.max_memory_allocated and max_memory_reserved at the end of the worker.

MFU of the update, model FLOPs in PaLM's convention (attention counted non-causal). Tc =
completion tokens trained (completion_len x completions x (1 - zero_std_frac)), Tp = prompt
tokens (thinkrl runs each group's prompt once), S = prompt + completion length, n = sequences
trained, L layers, H hidden; N_blocks = parameters outside embedding/head/adapters, N_head =
vocab x H (logits of completion tokens only; the embedding lookup is no matmul):
    forward F = 2 (N_blocks (Tc + Tp) + N_head Tc);  attention A = 12 L H S^2 n (fwd + bwd)
    full:  3F + A                      (6 x params x tokens: forward, input and weight gradients)
    LoRA:  2F + 6 N_lora (Tc + Tp) + A (frozen weights: forward + input gradient, 4 x params x tokens)
MFU = FLOPs / update seconds / peak, with and without A. The dense part agrees with
torch.utils.flop_counter on thinkrl's completion_logprobs + backward to 0.2% (full) and 1.1%
(LoRA: layer 0 needs no input gradient). Peak: 989 TFLOPS dense BF16 for an H200 (NVIDIA's
H200 datasheet: 1,979 TFLOPS BF16 "with sparsity"), when the GPU's name has the word H200;
otherwise --peak-tflops, or MFU is null. On a CPU (--tiny) there is no MFU and the JSON's
"mode" says it is a CPU smoke test, not a GPU measurement.

Estimated H200 runtime (no GPU was available to measure it): a step trains Tc 65,536 + Tp 800
tokens, F 6.5e13, A 1.2e13, full 2.1e14 FLOPs: 0.21 s at peak, ~0.6 s at 35% MFU (LoRA ~2/3).
Sampling 512 tokens x 128 rows is bound by kernel launches and the hf engine's per-token host
sync, ~10-20 ms per token: 5-10 s per step. Plus ~25 s per subprocess (imports, CUDA, loading
2 GB of weights, the final checkpoint: 6 GB with AdamW state for full) and ~15 s to build the
model: 2 variants x 4 steps, about 1.5-3 minutes. A variant is killed after --variant-timeout
(240 s), which bounds a hang at about 8.5 minutes.

Needs: torch, transformers >= 5 (thinkrl.policy uses TokenizersBackend), tokenizers,
safetensors, pyyaml and tqdm (transformers' own dependencies); peft for LoRA. Not needed:
math-verify (the reward avoids thinkrl's math rewards), matplotlib (report.html's plots only;
thinkrl warns without it), datasets. --check lists what is missing. Exit status: 0 ran (LoRA
skipped included), 1 a variant or this process failed, 2 a setup problem (no GPU without
--tiny, a missing module, a config that does not load).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                  max_position_embeddings=32768, rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151643)
TINY = dict(QWEN25_05B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=256)
EOS_ID, SPECIALS = 151643, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # at Qwen's ids 151643-151645
H200_TFLOPS = 989.0  # dense BF16; NVIDIA H200 datasheet (1,979 with sparsity)
REQUIRED = ["torch", "transformers", "tokenizers", "safetensors", "yaml", "tqdm"]
OPTIONAL = {"peft": "the lora variant", "math_verify": "math rewards (unused)", "matplotlib": "plots (unused)"}
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def digit_share(completions, **kwargs):
    """The reward: the share of digit characters, different for nearly every noisy completion."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def word(i: int) -> str:
    """The text of the i-th ordinary token: 1, 2, ..., z, 10, 11, ... in base 36."""
    return ALPHABET[i + 1] if i + 1 < 36 else word((i + 1) // 36 - 1) + ALPHABET[(i + 1) % 36]


class Failure(Exception):
    """A setup problem: the message says what to do; exit status 2."""


def machine() -> dict:
    import torch
    import transformers

    gpu = torch.cuda.is_available()
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "peft": importlib.import_module("peft").__version__ if importlib.util.find_spec("peft") else None,
            "gpu": torch.cuda.get_device_name(0) if gpu else None, "gpu_count": torch.cuda.device_count(),
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None}


def write_tokenizer(directory: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ids = [i for i in range(vocab_size) if not EOS_ID <= i < EOS_ID + len(SPECIALS)]
    vocab = {**{word(k): i for k, i in enumerate(ids)}, **{s: EOS_ID + k for k, s in enumerate(SPECIALS)}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIALS[0]))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=SPECIALS[0], pad_token=SPECIALS[0],
                            bos_token=SPECIALS[0]).save_pretrained(directory)


def write_model(directory: Path, shape: dict, build: bool = True) -> dict:
    """config.json (and, with build, random weights) of a Qwen2 of `shape`, plus the tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = Qwen2Config(**shape, pad_token_id=EOS_ID)
    torch.manual_seed(0)
    with torch.device("cpu" if build else "meta"):
        model = Qwen2ForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    if build:
        model.generation_config.eos_token_id = model.generation_config.pad_token_id = EOS_ID
        model.save_pretrained(directory)
        write_tokenizer(directory, shape["vocab_size"])
    return {"parameters": n, "embedding": model.get_input_embeddings().weight.numel(), **shape}


def write_prompts(path: Path, rows: int, words: int, vocab_size: int) -> None:
    rng, n = random.Random(0), vocab_size - len(SPECIALS)  # word(k): the token at the k-th non-special id
    path.write_text("".join(json.dumps({"question": " ".join(word(rng.randrange(n)) for _ in range(words)),
                                        "answer": "0"}) + "\n" for _ in range(rows)))


def overrides(args, model_dir: Path, data: Path, variant: str) -> list[str]:
    o = [f"model.path={model_dir}", "model.template=none", "model.dtype=auto", f"data.train={data}",
         "data.eval=none", f"data.max_prompt_tokens={args.prompt_tokens + 8}", f"rollout.group_size={args.group}",
         f"train.prompts_per_step={args.prompts}", f"rollout.max_new_tokens={args.new_tokens}", "rollout.stop=[]",
         f"train.micro_batch_size={args.micro}", f"train.steps={args.warmup + args.steps}", "train.save_every=0",
         "train.profile=true", "run.progress=false", "run.seed=0", f"run.threads={args.threads}",
         "rewards.weights={'gpu_step:digit_share': 1.0}", "rewards.isolate=false",
         f"model.device={'cpu' if args.tiny_on_cpu else 'cuda'}"]
    if variant == "lora":
        o += [f"model.lora.r={args.lora_r}", f"model.lora.alpha={2 * args.lora_r}",
              "model.lora.target_modules=[all-linear]"]
    return o


def counts(model) -> dict:
    """Parameters by role: the blocks (everything but embedding, output head and adapters), the
    output head (vocab x hidden, tied or not), the adapters, and what the optimizer trains."""
    params = dict(model.named_parameters())
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    lora, total = sum(p.numel() for n, p in params.items() if "lora_" in n), sum(p.numel() for p in params.values())
    tied = head.data_ptr() == emb.data_ptr()
    return {"total": total, "trainable": sum(p.numel() for p in params.values() if p.requires_grad), "lora": lora,
            "head": head.numel(), "blocks": total - emb.numel() - (0 if tied else head.numel()) - lora}


def update_flops(c: dict, shape: dict, variant: str, completions: int, prompts: int, prompt_len: int,
                 completion_len: float, kept: float) -> dict:
    n = completions * kept  # sequences trained
    tc, tp, s = completion_len * n, prompts * prompt_len, prompt_len + completion_len
    forward = 2 * (c["blocks"] * (tc + tp) + c["head"] * tc)
    attention = 12 * shape["num_hidden_layers"] * shape["hidden_size"] * s * s * n
    dense = 3 * forward if variant == "full" else 2 * forward + 6 * c["lora"] * (tc + tp)
    return {"dense": dense, "attention": attention, "completion_tokens": tc, "prompt_tokens": tp}


def worker(args) -> dict:
    import torch

    from thinkrl.config import load_config
    from thinkrl.metrics import read_metrics
    from thinkrl.train.grpo import GRPOTrainer

    run_dir = Path(args._run)
    cuda = torch.cuda.is_available() and not args.tiny_on_cpu
    cfg = load_config(None, overrides(args, Path(args._model), Path(args._data), args._variant))
    t, trainer = time.perf_counter(), GRPOTrainer(cfg, run_dir)
    init_s, step = time.perf_counter() - t, trainer.train_step
    print(f"{args._variant}: trainer ready in {init_s:.1f} s", flush=True)  # so a timed-out log_tail says how far
    trainer.train_step = lambda: print(f"step {trainer.step + 1} starts at {time.perf_counter() - t:.1f} s",
                                       flush=True) or step()
    at_start = torch.cuda.memory_allocated() if cuda else None
    c = counts(trainer.policy)
    t = time.perf_counter()
    summary = trainer.run()
    run_s = time.perf_counter() - t  # the steps, the final checkpoint, summary and report.html
    if summary.get("error"):
        raise RuntimeError(f"the run stopped: {summary['error']}")
    everything = read_metrics(run_dir)
    rows = [r for r in everything if r["step"] > args.warmup]
    if len(rows) != args.steps:
        raise RuntimeError(f"{run_dir}/metrics.jsonl has {len(rows)} measured steps, expected {args.steps}")
    med = lambda f: statistics.median(r[f] if isinstance(f, str) else f(r) for r in rows)  # noqa: E731
    n = args.group * args.prompts
    shape = json.loads((Path(args._model) / "config.json").read_text())
    fl = {r["step"]: update_flops(c, shape, args._variant, n, args.prompts, args.prompt_tokens, r["completion_len"],
                                  1 - r["zero_std_frac"]) for r in rows}  # each step's, from its lengths
    update = lambda r: r["timing/update"] + r["timing/logprobs"]  # noqa: E731

    def tflops(*parts):  # None if a step had nothing to update
        ok = all(update(r) > 0 for r in rows)
        return med(lambda r: sum(fl[r["step"]][k] for k in parts) / update(r) / 1e12) if ok else None
    out = {
        "seconds_per_step": med("step_seconds"), "sampling_s": med("timing/generate"), "update_s": med(update),
        "scoring_s": med("timing/reward"), "update_forward_backward_s": med("profile/forward_backward"),
        "update_optimizer_s": med("profile/optimizer"),
        "rollout_tokens_per_s": med(lambda r: r["completion_len"] * n / r["timing/generate"]),
        "mean_completion_tokens": med("completion_len"), "truncated_frac": med("truncated_frac"),
        "trained_sample_frac": med(lambda r: 1 - r["zero_std_frac"]), "reward_std": med("reward_std"),
        "steps_measured": [r["step"] for r in rows], "trainer_init_s": init_s, "run_s": run_s, "parameters": c,
        "warmup_step_seconds": next((r["step_seconds"] for r in everything if r["step"] == 1 and args.warmup), None),
        "update_flops_by_step": {s: {k: round(v) for k, v in f.items()} for s, f in fl.items()},
        "update_tflops_achieved": tflops("dense", "attention"), "update_tflops_achieved_no_attention": tflops("dense"),
    }
    if cuda:
        gib = 2**30
        out.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / gib, allocated_after_init_gib=at_start / gib,
                   peak_reserved_gib=torch.cuda.max_memory_reserved() / gib)
    else:
        import resource
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def peak_for(gpu: str | None, override: float | None) -> tuple[float | None, str]:
    if override or not (gpu and re.search(r"\bH200\b", gpu)):
        return override, "--peak-tflops" if override else f"no peak known for {gpu!r}: pass --peak-tflops (dense BF16)"
    return H200_TFLOPS, "NVIDIA H200 datasheet: 1,979 TFLOPS BF16 with sparsity, 989 dense"


def run_variant(args, variant: str, model_dir: Path, data: Path, tmp: Path) -> dict:
    if variant == "lora" and importlib.util.find_spec("peft") is None:
        return {"skipped": "PEFT is not installed (pip install peft): the lora variant needs it"}
    out = tmp / f"{variant}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", "--_variant", variant, "--_json", str(out),
           "--_model", str(model_dir), "--_data", str(data), "--_run", str(tmp / f"run_{variant}"), *args.passed]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    t = time.perf_counter()
    print(f"gpu_step: running {variant} (at most {args.variant_timeout} s)", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=args.variant_timeout)
    except subprocess.TimeoutExpired as e:
        tail = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        return {"error": f"timed out after {args.variant_timeout} s", "log_tail": tail[-3000:]}
    if proc.returncode != 0 or not out.exists():
        return {"error": f"the worker exited {proc.returncode}", "log_tail": proc.stdout[-3000:]}
    return {**json.loads(out.read_text()), "process_s": time.perf_counter() - t}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, hint in (("--tiny", "hidden 64, 2 layers, G 4 x 2 prompts, 16 new tokens (a CPU smoke test)"),
                       ("--check", "only check imports, the tokenizer, the configs and the reward"),
                       ("--_worker", argparse.SUPPRESS)):
        ap.add_argument(flag, action="store_true", help=hint)
    for flag, kind, default, hint in (
            ("--out", str, None, "also write the JSON here"), ("--variants", str, "full,lora", "full, lora or both"),
            ("--steps", int, 3, "measured steps"), ("--warmup", int, 1, "warm-up steps, not measured"),
            ("--micro", int, None, "completions per forward/backward (16; tiny: all)"),
            ("--peak-tflops", float, None, "the GPU's dense BF16 peak (an H200: 989 unless given)"),
            ("--threads", int, 0, "torch CPU threads (0: torch's default)"),
            ("--variant-timeout", int, 240, "seconds before a variant is killed"), ("--lora-r", int, 16, "LoRA rank"),
            *((f"--_{name}", str, None, argparse.SUPPRESS) for name in ("variant", "model", "data", "run", "json"))):
        ap.add_argument(flag, type=kind, default=default, help=hint)
    args = ap.parse_args(argv)
    args.passed = [*(["--tiny"] if args.tiny else []), *(["--micro", str(args.micro)] if args.micro else []),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
                   "--lora-r", str(args.lora_r)]
    shape = TINY if args.tiny else QWEN25_05B
    args.group, args.prompts = (4, 2) if args.tiny else (16, 8)
    args.new_tokens, args.prompt_tokens = (16, 24) if args.tiny else (512, 100)
    args.micro = args.micro or (args.group * args.prompts if args.tiny else 16)
    if args._worker:
        import torch
        args.tiny_on_cpu = not torch.cuda.is_available()
        Path(args._json).write_text(json.dumps(worker(args)))
        return 0
    t0, report = time.perf_counter(), {"bench": "gpu_step"}
    try:
        report["missing_modules"] = missing = {"required": [m for m in REQUIRED if not importlib.util.find_spec(m)],
                                               "optional": {m: why for m, why in OPTIONAL.items()
                                                            if not importlib.util.find_spec(m)}}
        if missing["required"]:
            raise Failure(f"missing Python modules: {', '.join(missing['required'])} (pip install them; "
                          "pyyaml provides yaml)")
        import torch
        report["machine"] = m = machine()
        on_gpu = torch.cuda.is_available()
        args.tiny_on_cpu = not on_gpu
        if not on_gpu and not (args.tiny or args.check):
            raise Failure("no CUDA GPU here: this bench measures a GPU; use --tiny for a CPU smoke test or "
                          "--check to check the setup")
        report["mode"] = ("GPU measurement" if on_gpu else
                          "CPU smoke test: not a GPU measurement, the numbers only show the script runs")
        peak, source = peak_for(m["gpu"], args.peak_tflops)
        report["peak_tflops"], report["peak_source"] = (peak, source) if on_gpu else (None, "no GPU")
        with tempfile.TemporaryDirectory(prefix="gpu_step_") as tmp:
            tmp = Path(tmp)
            t = time.perf_counter()
            report["model"] = write_model(tmp / "model", TINY if args.check else shape)  # --check: tiny weights
            report["model_build_s"] = time.perf_counter() - t
            data = tmp / "train.jsonl"
            write_prompts(data, 64, args.prompt_tokens, shape["vocab_size"])
            report["settings"] = dict(group_size=args.group, prompts_per_step=args.prompts, lora_r=args.lora_r,
                                      max_new_tokens=args.new_tokens, prompt_tokens=args.prompt_tokens,
                                      micro_batch_size=args.micro, warmup_steps=args.warmup, measured_steps=args.steps)
            if args.check:
                return check(args, report, tmp, data)
            report["variants"] = {}
            for variant in args.variants.split(","):
                res = run_variant(args, variant, tmp / "model", data, tmp)
                if peak and "update_tflops_achieved" in res:
                    res["mfu"] = res["update_tflops_achieved"] / peak
                    res["mfu_no_attention"] = res["update_tflops_achieved_no_attention"] / peak
                report["variants"][variant] = res
        failed, report["wall_s"] = [v for v, r in report["variants"].items() if "error" in r], time.perf_counter() - t0
        emit(report, args.out)
        if failed:
            print(f"gpu_step: variant(s) {', '.join(failed)} failed; see their log_tail", file=sys.stderr)
            return 1
        return 0
    except Exception as e:  # a setup problem (Failure: exit 2) or a crash of this process (1)
        report["error"] = str(e) if isinstance(e, Failure) else f"{type(e).__name__}: {e}"
        emit(report, args.out)
        if not isinstance(e, Failure):
            import traceback
            traceback.print_exc()
        print(f"gpu_step: {report['error']}", file=sys.stderr)
        return 2 if isinstance(e, Failure) else 1


def check(args, report: dict, tmp: Path, data: Path) -> int:
    """Imports, the tokenizer and both variants' configs (on a tiny model), the reward, the full
    model's parameter count on the meta device; nothing trains."""
    from thinkrl.checks import ConfigError
    from thinkrl.config import load_config
    from thinkrl.policy import load_tokenizer
    from thinkrl.train.grpo import GRPOTrainer  # noqa: F401  (what the workers import)

    tok = load_tokenizer(str(tmp / "model"))  # as the trainer loads it
    text = tok.decode([0, 1, 36, EOS_ID - 1, EOS_ID], skip_special_tokens=True)
    if len(tok) != TINY["vocab_size"] or tok.eos_token_id != EOS_ID or not text:
        raise Failure(f"the built tokenizer is wrong: {len(tok)} tokens, eos {tok.eos_token_id}, decodes {text!r}")
    for variant in args.variants.split(","):
        try:  # without PEFT the lora variant is skipped (missing_modules says so), its config not loaded
            if variant != "lora" or importlib.util.find_spec("peft"):
                load_config(None, overrides(args, tmp / "model", data, variant))
        except ConfigError as e:
            raise Failure(f"the {variant} config does not load: {e}") from e
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_step import digit_share as reward  # as the trainer imports it (rewards.weights)

    report["check"] = {"ok": True, "tokenizer_decodes": text, "reward_of_decoded": reward([text])[0],
                       "full_size_model": write_model(tmp / "meta", QWEN25_05B, build=False)["parameters"]}
    emit(report, args.out)
    return 0


def emit(report: dict, out: str | None) -> None:
    print(text := json.dumps(report, indent=1, default=str))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    for name, r in report.get("variants", {}).items():
        if "seconds_per_step" in r:
            mem = (f"peak alloc {r['peak_allocated_gib']:.1f} GiB" if "peak_allocated_gib" in r
                   else f"peak RSS {r['peak_rss_mib']:.0f} MiB")
            mfu = f"MFU {100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "MFU n/a"
            print(f"{name:5} {r['seconds_per_step']:.2f} s/step = sample {r['sampling_s']:.2f} + score "
                  f"{r['scoring_s']:.3f} + update {r['update_s']:.2f}; {r['rollout_tokens_per_s']:.0f} rollout tok/s; "
                  f"{mem}; {mfu}", file=sys.stderr)
        else:
            print(f"{name:5} {r.get('skipped') or r.get('error')}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
