"""SFT: the masked loss against a hand computation, packing and prefix sharing against each
sample run alone, chat-template masking, config and data errors, resume equality, and an
end-to-end run on the embedded task whose final model loads."""

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from tests.test_trainer import dies_in_step
from thinkrl.cli import main as cli_main
from thinkrl.config import ConfigError
from thinkrl.data import DataError
from thinkrl.metrics import read_metrics
from thinkrl.policy import load_model, load_tokenizer
from thinkrl.train.sft import (SFTConfig, SFTTrainer, batch_nll, load_sft_config, lr_factor, masked_lm_loss,
                         run_sft)
from thinkrl.train.sft_data import IGNORE, encode_messages, encode_prompt_response, encode_rows, pack, pad_batch, read_rows
from thinkrl.task.arithmetic import completion, make_problem

from .conftest import make_tokenizer

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()  # one thread here (the machine is shared); leave it as found
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def task_rows(n: int, seed: int = 0, kind: str = "correct") -> list[dict]:
    rng = random.Random(seed)
    probs = [make_problem(rng, 1 + i % 4) for i in range(n)]
    return [{"prompt": p["question"], "response": completion(p["a"], p["b"], kind), "source": "test"} for p in probs]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------- the loss


def test_masked_lm_loss_is_the_mean_nll_of_response_tokens_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 6, IGNORE], [IGNORE, 1, IGNORE, 0, 2]])
    terms = []
    for b in range(2):
        for t in range(1, 5):  # the logits at t-1 predict the token at t
            if labels[b, t] != IGNORE:
                terms.append(-torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]])
    expected = torch.stack(terms).mean()
    assert masked_lm_loss(logits, labels).item() == pytest.approx(expected.item(), abs=1e-6)
    assert masked_lm_loss(logits, labels, normaliser=10).item() == pytest.approx(expected.item() * 5 / 10, abs=1e-6)
    with pytest.raises(ValueError, match="no response tokens"):
        masked_lm_loss(logits, torch.full_like(labels, IGNORE))


def test_prompt_response_masks_exactly_the_response_and_eos():
    tok = load_tokenizer("embedded")
    (ids, labels), = encode_prompt_response(["What is 12+9?"], [" <think>2+9=11</think> <answer>21</answer>"], tok,
                                            "r1_zero")
    trained = [i for i, y in zip(ids, labels) if y != IGNORE]
    assert trained[-1] == tok.eos_token_id
    assert tok.decode(trained[:-1]) == " <think>2+9=11</think> <answer>21</answer>"
    assert tok.decode(ids[: len(ids) - len(trained)]).endswith("User: What is 12+9?. Assistant:")
    assert all(y == IGNORE for y in labels[: len(ids) - len(trained)])


# ---------------------------------------------------------------------------- packing


def mixed_samples(tok, n=5, seed=1):
    rng = random.Random(seed)
    prompts = [" ".join(rng.choice(["What is", "347+85?", "wait", "check the carry"]) for _ in range(rng.randint(1, 6)))
               for _ in range(n)]
    responses = [" <think> 7+5=12 </think> <answer> 432 </answer>"[: rng.randint(5, 50)] for _ in range(n)]
    return encode_prompt_response(prompts, responses, tok, "none")


@pytest.mark.parametrize("arch", ["embedded_qwen2", "llama"])
def test_packed_forward_equals_each_sample_alone(arch, llama_dir):
    path = "embedded" if arch == "embedded_qwen2" else str(llama_dir)
    tok, model = load_tokenizer(path), load_model(path, CPU)
    samples = mixed_samples(tok)
    longest = max(len(s[0]) for s in samples)
    batch = pack(samples, pack_length=2 * longest)
    assert len(batch.boundaries) < len(samples)  # several samples share a row
    assert sorted(i for row in batch.boundaries for i, _, _ in row) == list(range(len(samples)))
    with torch.no_grad():
        packed = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
        # the same rows with positions not restarting: samples see each other (the test can fail)
        flat = model(input_ids=batch.input_ids, use_cache=False).logits
        leaked = 0.0
        for r, row in enumerate(batch.boundaries):
            for i, start, end in row:
                assert batch.position_ids[r, start:end].tolist() == list(range(end - start))
                alone = model(input_ids=torch.tensor([samples[i][0]]), use_cache=False).logits[0]
                torch.testing.assert_close(packed[r, start:end], alone, atol=5e-5, rtol=1e-5)
                leaked = max(leaked, float((flat[r, start:end] - alone).abs().max()))
        assert leaked > 1e-2
        # the loss: packed = padded = shared prefix = each sample alone, summed
        alone_sum = sum(masked_lm_loss(model(input_ids=torch.tensor([x]), use_cache=False).logits,
                                       torch.tensor([y]), normaliser=1) for x, y in samples)
        for b in (batch, pad_batch(samples), pad_batch(samples, share_prefix=True, min_prefix=1)):
            assert batch_nll(model, b).item() == pytest.approx(alone_sum.item(), rel=1e-5)


def test_shared_prefix_gives_the_same_loss_and_gradient_on_the_r1_zero_template():
    tok, model = load_tokenizer("embedded"), load_model("embedded", CPU)
    rows = task_rows(6)
    samples = encode_prompt_response([r["prompt"] for r in rows], [r["response"] for r in rows], tok, "r1_zero")
    shared = pad_batch(samples, share_prefix=True)
    assert shared.prefix_len > 80  # the template's head, up to the question
    # rejection-sampled data: one question, several answers that agree on their first tokens;
    # the shared part must stop where the first response token is to be predicted
    one = [completion(347, 85, kind) for kind in ("correct", "buggy", "reflective")]
    same_q = encode_prompt_response(["What is 347+85?"] * 3, one, tok, "r1_zero")
    first_target = next(t for t, y in enumerate(same_q[0][1]) if y != IGNORE)
    assert same_q[0][0][first_target + 1] == same_q[1][0][first_target + 1]  # the responses start alike
    assert pad_batch(same_q, share_prefix=True).prefix_len == first_target
    grads = []
    for b in (pad_batch(samples + same_q), pad_batch(samples + same_q, share_prefix=True),
              pad_batch(same_q, share_prefix=True), pack(samples + same_q, 300)):
        model.zero_grad()
        loss = batch_nll(model, b)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    same_q_alone = sum(batch_nll(model, pad_batch([x])).item() for x in same_q)
    assert grads[2][0] == pytest.approx(same_q_alone, rel=1e-6)
    del grads[2]
    for loss, g in grads[1:]:
        assert loss == pytest.approx(grads[0][0], rel=1e-6)
        for a, b in zip(g, grads[0][1]):  # float32 sums in another order: a relative error near 1e-6
            assert (a - b).norm() <= 1e-4 * b.norm() + 1e-9, ((a - b).norm(), b.norm())


# ---------------------------------------------------------------------------- chat format

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_chat_rows_train_on_assistant_turns_only():
    tok = make_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 347+85?"},
            {"role": "assistant", "content": "<think> 7+5=12 </think> <answer> 432 </answer>"},
            {"role": "user", "content": "wait check"}, {"role": "assistant", "content": "check the carry"}]
    ids, labels = encode_messages(msgs, tok)
    assert tok.decode(ids) == tok.apply_chat_template(msgs, tokenize=False)
    spans, cur = [], []
    for i, y in zip(ids, labels):
        if y != IGNORE:
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    spans += [tok.decode(cur)] if cur else []
    # exactly each assistant turn's content and its end-of-turn token, nothing of the user's
    assert spans == ["<think> 7+5=12 </think> <answer> 432 </answer><|endoftext|>", "check the carry<|endoftext|>"]


def test_messages_without_a_chat_template_name_the_fix(tmp_path):
    tok = make_tokenizer()
    assert not tok.chat_template
    with pytest.raises(DataError, match="chat template.*data.template"):
        encode_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tok)
    d = SFTConfig().data
    rows, _ = read_rows(write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                                        {"role": "assistant", "content": "b"}]}]), d)
    with pytest.raises(DataError, match="c.jsonl:1: .*messages format"):
        encode_rows(rows, tok, "r1_zero", 100, "skip", str(tmp_path / "c.jsonl"))


# ---------------------------------------------------------------------------- config and data


@pytest.mark.parametrize("override, message", [
    ("train.batch_sise=8", "unknown config key 'train.batch_sise'; did you mean 'batch_size'"),
    ("train.micro_batch_size=3", "train.batch_size=64 is not divisible by train.micro_batch_size=3"),
    ("train.epochs=0", "train.epochs=0"),
    ("data.template=plain", "data.template='plain'"),
    ("optim.schedule=step", "optim.schedule='step'"),
])
def test_bad_config_fails_with_what_to_change(override, message):
    with pytest.raises(ConfigError) as e:
        load_sft_config(None, ["data.train=x.jsonl", override])
    assert message in str(e.value)


def test_config_needs_training_data_and_ships_a_valid_example(capsys):
    with pytest.raises(ConfigError, match="data.train is not set"):
        load_sft_config(None, [])
    assert cli_main(["sft", "train.epochs=1"]) == 2
    assert "data.train" in capsys.readouterr().err
    cfg = load_sft_config(str(ROOT / "configs" / "sft-tiny.yaml"), [])
    assert cfg.model.path == "embedded" and cfg.data.train


def test_bad_rows_raise_with_file_and_line_or_are_skipped_and_counted(tmp_path):
    good = task_rows(3)
    path = write_jsonl(tmp_path / "t.jsonl", [good[0], "{not json", {"prompt": "q"}, {"prompt": "q", "response": 3},
                                               {"messages": [{"role": "user", "content": "x"}]}, good[1], "[1, 2]"])
    d = SFTConfig().data
    with pytest.raises(DataError, match=r"t.jsonl:2: not valid JSON.*data.on_bad_row=skip"):
        read_rows(path, d)
    d.on_bad_row = "skip"
    rows, bad = read_rows(path, d)
    assert bad == 5 and [r["line"] for r in rows] == [1, 6]
    tok = load_tokenizer("embedded")
    samples, skipped = encode_rows(rows + [{"prompt": "q" * 500, "response": "r", "line": 9}], tok, "r1_zero",
                                   200, "skip")
    assert len(samples) == 2 and skipped == {"too_long": 1, "bad_rows": 0}
    empty = write_jsonl(tmp_path / "e.jsonl", ["{not json"])
    with pytest.raises(DataError, match="no usable rows"):
        read_rows(empty, d)


def test_lr_schedule_warms_up_then_decays():
    assert [lr_factor(i, 10, 2, "constant") for i in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(2, 10, 2, "cosine") == pytest.approx(1.0) and lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(6, 10, 2, "linear") == pytest.approx(0.5)


# ---------------------------------------------------------------------------- runs


def tiny_overrides(data: Path, **extra) -> list[str]:
    base = {"data.train": str(data), "train.epochs": 2, "train.batch_size": 4, "train.micro_batch_size": 2,
            "optim.lr": 1e-3, "optim.warmup_steps": 2, "run.progress": False, "run.seed": 5,
            "data.eval_fraction": 0.2, "run.threads": 1}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.mark.parametrize("packing", [False, True])
def test_resume_after_a_crash_continues_the_same_run(tmp_path, packing):
    data = write_jsonl(tmp_path / "d.jsonl", task_rows(15))  # 12 train rows: 6 steps, the last one short
    overrides = tiny_overrides(data, **{"train.save_every": 2, "train.packing": packing, "train.pack_length": 300})
    whole = run_sft(load_sft_config(None, overrides), tmp_path / "whole")
    assert whole["steps"] == 6 and whole["total_steps"] == 6

    part = SFTTrainer(load_sft_config(None, overrides), tmp_path / "part")
    dies_in_step(part, 4)
    with pytest.raises(RuntimeError, match="killed"):
        part.run()
    assert [r["step"] for r in read_metrics(tmp_path / "part")] == [0, 1, 2, 3]
    torch.manual_seed(123)  # a fresh process's random state: the checkpoint must restore its own
    resumed = SFTTrainer(load_sft_config(None, overrides), tmp_path / "part", resume=True)
    assert resumed.step == 2 and resumed.sampler.pos == 8
    summary = resumed.run()
    assert summary["resumed_from"].endswith("step_000002")
    a, b = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "part")
    assert [r["step"] for r in b] == list(range(7))
    for ra, rb in zip(a, b):
        for k in ("epoch", "loss", "lr", "tokens", "eval/loss"):
            assert ra.get(k) == pytest.approx(rb.get(k), abs=1e-6), (ra["step"], k)
    wa, wb = load_model(whole["final_dir"], CPU), load_model(summary["final_dir"], CPU)
    for (name, p), q in zip(wa.state_dict().items(), wb.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


def test_end_to_end_lowers_the_loss_and_the_final_model_loads(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", task_rows(300, seed=2, kind="reflective"))
    out = tmp_path / "run"
    code = cli_main(["sft", "--out", str(out), *tiny_overrides(data, **{"train.epochs": 1, "train.batch_size": 16,
                                                              "train.micro_batch_size": 8, "data.eval_fraction": 0.1})])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 270 and summary["n_eval"] == 30 and summary["skipped"]["too_long"] == 0
    assert summary["eval_loss"] < 0.7 * summary["eval_loss_start"], summary
    rows = read_metrics(out)
    assert rows[-1]["step"] == summary["steps"] == 17 and rows[-1]["epoch"] == 1.0
    assert rows[-1]["loss"] < rows[1]["loss"]
    assert all(k in rows[1] for k in ("loss", "lr", "tokens", "epoch"))
    model = load_model(summary["final_dir"], CPU, requires_grad=False)
    tok = load_tokenizer(summary["final_dir"])
    assert tok.eos_token_id == load_tokenizer("embedded").eos_token_id and model.config.vocab_size == len(tok)
    assert (out / "config.yaml").exists() and json.loads((out / "summary.json").read_text())["final_dir"]
    shutil.rmtree(out / "final")
    assert cli_main(["sft", "--out", str(out), "--resume"]) == 0  # a finished run: resuming writes final/ again
    assert (out / "final" / "model.safetensors").exists()


def test_sigkill_then_resume_from_the_command_line(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    data = write_jsonl(tmp_path / "d.jsonl", task_rows(60))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "thinkrl.cli", "sft", "--out", str(out),
           *tiny_overrides(data, **{"train.epochs": 1, "train.batch_size": 2, "train.micro_batch_size": 2,
                                    "train.save_every": 5, "data.eval_fraction": 0})]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoints" / "step_000010").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoints" / "step_000010").exists(), proc.stdout.read().decode()[-2000:]
    assert not (out / "final").exists()
    res = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 31))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["resumed_from"] and (out / "final" / "model.safetensors").exists()


def test_chat_rows_train_end_to_end_on_a_model_with_a_chat_template(tmp_path, qwen2_dir):
    model_dir = tmp_path / "chat_model"
    shutil.copytree(qwen2_dir, model_dir)
    tok = load_tokenizer(str(model_dir))
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(model_dir)
    convo = [{"role": "user", "content": "What is 347+85?"},
             {"role": "assistant", "content": "<think> 7+5=12 </think> <answer> 432 </answer>"}]
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": convo, "source": "x"}] * 8)
    s = run_sft(load_sft_config(None, tiny_overrides(data, **{"model.path": str(model_dir), "optim.lr": 1e-2,
                                                              "train.epochs": 3})), tmp_path / "run")
    assert s["n_samples"] == 6 and s["eval_loss"] < s["eval_loss_start"]
    assert load_tokenizer(s["final_dir"]).chat_template == CHAT_TEMPLATE
