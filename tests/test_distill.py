"""Distillation (docs/R1-PIPELINE.md §Distillation): SFT of a student with another architecture
and tokenizer on the teacher's filtered text, and on-policy distillation by the exact reverse
KL."""

import json
import random

import pytest

from thinkrl.cli import main as cli_main
import torch

from thinkrl.distill.run import FilterConfig, filter_samples, load_distill_config, round_trips, run_distill
from thinkrl.distill.onpolicy import reverse_kl_per_token
from thinkrl.policy import load_tokenizer
from thinkrl.task import arithmetic as ar
from thinkrl.task.build import build_model
from thinkrl.template import render



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the machine is shared (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def task_texts(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    problems = [ar.make_problem(rng, 1 + i % 4) for i in range(n)]
    return [render("")] * 20 + [p["question"] + ar.completion(p["a"], p["b"], "correct", rng) for p in problems]


def student_bpe_tokenizer(vocab_size: int = 600):
    """A byte-level BPE unlike the teacher's: another size, digits merged, tags not single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(task_texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", padding_side="left",
                                   clean_up_tokenization_spaces=False)


def char_tokenizer(alphabet: str):
    """One token per character of `alphabet`, anything else <unk>: it cannot reproduce other text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, "<pad>": 2, **{c: 3 + i for i, c in enumerate(sorted(set(alphabet)))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", pad_token="<pad>")


def save_student(path, tokenizer, arch: str, hidden: int = 64, layers: int = 2, seed: int = 0):
    model = build_model(tokenizer, seed, hidden=hidden, layers=layers, heads=4, intermediate=2 * hidden, arch=arch)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ---------------------------------------------------------------------------- reverse KL


def test_reverse_kl_matches_the_direct_sum_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    t = torch.randn(2, 3, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    kl = reverse_kl_per_token(s, t, mask)
    for i in range(2):
        for j in range(3):
            ps = [x / sum(s[i, j].exp().tolist()) for x in s[i, j].exp().tolist()]
            pt = [x / sum(t[i, j].exp().tolist()) for x in t[i, j].exp().tolist()]
            direct = sum(p * (torch.tensor(p).log() - torch.tensor(q).log()).item() for p, q in zip(ps, pt))
            want = direct if mask[i, j] else 0.0
            assert kl[i, j].item() == pytest.approx(want, abs=1e-5)
            assert (kl[i, j].item() > 1e-4) == bool(mask[i, j])  # positive wherever counted
    (kl.sum()).backward()
    # d KL / d z_s = p_s (log p_s − log p_t − KL), transcribed by hand; zero where masked
    p, lq = torch.softmax(s.detach(), -1), torch.log_softmax(t.detach(), -1)
    k = (p * (p.log() - lq)).sum(-1, keepdim=True)
    want_grad = p * (p.log() - lq - k) * mask[..., None]
    assert torch.allclose(s.grad, want_grad, atol=1e-6)
    assert t.grad is None  # the teacher gets no gradient


def test_reverse_kl_is_zero_for_equal_distributions():
    s = torch.randn(3, 4, 7)
    mask = torch.ones(3, 4, dtype=torch.bool)
    assert torch.allclose(reverse_kl_per_token(s, s + 2.5, mask), torch.zeros(3, 4), atol=1e-6)  # same softmax
    assert (reverse_kl_per_token(s, s.flip(-1), mask) > 0).all()
    # a token the student never picks costs nothing even where the teacher rules it out
    inf = float("-inf")
    s2, t2 = torch.tensor([[[0.0, 0.0, inf]]]), torch.tensor([[[0.0, 0.0, inf]]])
    assert reverse_kl_per_token(s2, t2, torch.ones(1, 1, dtype=torch.bool)).item() == 0.0


# ---------------------------------------------------------------------------- filtering


def test_filter_keeps_exactly_the_correct_well_formed_samples():
    def sample(pid, j, text, answer="12", finish="stop"):
        s = {"prompt_id": pid, "sample_index": j, "question": f"q{pid}", "completion": text, "finish_reason": finish}
        return s if answer is None else dict(s, answer=answer)

    good = " <think>5+7=12</think> <answer>12</answer>"
    samples = [
        sample(0, 0, good),
        sample(0, 1, good + " "),  # the same answer again
        sample(0, 2, " <think>5+7=13</think> <answer>13</answer>"),  # wrong
        sample(0, 3, " <answer>12</answer>"),  # right, but no reasoning block
        sample(0, 4, " <think>5+7=1", finish="length"),  # cut at max_new_tokens
        sample(0, 5, "  "),
        *[sample(1, j, f" <think>3+4=7{' ok' * j}</think> <answer>7</answer>", answer="7") for j in range(3)],
        sample(2, 0, " <think>no reference</think> <answer>5</answer>", answer=None),  # nothing to check
        sample(3, 0, " <think>1+1=2</think> <answer>2€</answer>", answer=None),  # the student cannot spell it
    ]
    student = char_tokenizer("".join(s["question"] + s["completion"] for s in samples).replace("€", ""))
    kept, dropped = filter_samples(samples, FilterConfig(max_per_prompt=2), student)
    assert [(s["prompt_id"], s["sample_index"]) for s in kept] == [(0, 0), (1, 0), (1, 1), (2, 0)]
    assert dropped == {"duplicate": 1, "wrong": 1, "format": 1, "truncated": 1, "empty": 1, "over_cap": 1,
                       "not_representable": 1}
    # with the format check, dedup and truncation off, only correctness (where there is an answer) decides
    kept, dropped = filter_samples(samples, FilterConfig(format="none", dedup=False, drop_truncated=False))
    kept_ids = [(s["prompt_id"], s["sample_index"]) for s in kept]
    assert (0, 3) in kept_ids and (0, 1) in kept_ids and (0, 2) not in kept_ids and (3, 0) in kept_ids
    assert dropped == {"wrong": 2, "empty": 1}  # the truncated one has no answer, so it is wrong


def test_round_trip_detects_lossy_tokenizers():
    bpe, chars = student_bpe_tokenizer(), char_tokenizer("abc ")
    text = " <think>7+5=12 4+8+1=13</think> <answer>132</answer>"
    assert round_trips(bpe, text) and round_trips(bpe, render("What is 45+7?"))
    assert round_trips(chars, "abc cab") and not round_trips(chars, "abd")


# ---------------------------------------------------------------------------- on-policy


def on_policy_overrides(student: str, **extra) -> list[str]:
    base = {"mode": "on_policy", "student.path": student, "teacher.path": "embedded", "on_policy.steps": 8,
            "on_policy.prompts_per_step": 4, "on_policy.samples_per_prompt": 2, "on_policy.max_new_tokens": 16,
            "on_policy.lr": 1e-2, "eval.size": 8, "eval.every": 0, "eval.max_new_tokens": 16, "run.progress": False,
            "on_policy.save_every": 4}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_on_policy_distillation_lowers_the_reverse_kl(tmp_path):
    from thinkrl.checkpoint import latest_checkpoint
    from thinkrl.metrics import read_metrics

    teacher_tok = load_tokenizer("embedded")
    student = save_student(tmp_path / "student", teacher_tok, "qwen2", hidden=32)
    summary = run_distill(load_distill_config(None, on_policy_overrides(student)), tmp_path / "run")
    assert summary["steps"] == 8
    assert summary["reverse_kl_end"] < 0.8 * summary["reverse_kl_start"], summary
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(9)) and all(r["reverse_kl"] > 0 for r in rows[1:])
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step_000008"
    assert (tmp_path / "run" / "student" / "model.safetensors").exists()
    # --resume continues the run from its newest checkpoint, with the settings it started with
    assert cli_main(["distill", "--resume", "--out", str(tmp_path / "run"), "on_policy.steps=10"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["resumed_from"].endswith("step_000008")
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == list(range(11))


def test_on_policy_with_another_tokenizer_fails_at_start(tmp_path, capsys):
    student = save_student(tmp_path / "student", student_bpe_tokenizer(), "llama", hidden=32)
    code = cli_main(["distill", "--on-policy", "--teacher", "embedded", "--student", student, "--out", str(tmp_path / "run"),
                 "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "share one tokenizer" in err and "SFT distillation" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------- SFT distillation


def response_nll(model_dir: str, rows: list[dict]) -> float:
    """Mean NLL per response token of the student on the teacher's text, computed directly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    total, n = 0.0, 0
    with torch.no_grad():
        for r in rows:
            p = tok(render(r["prompt"]), add_special_tokens=False)["input_ids"]
            c = tok(r["response"], add_special_tokens=False)["input_ids"]
            logp = torch.log_softmax(model(torch.tensor([p + c])).logits[0, len(p) - 1: -1], -1)
            total -= logp.gather(-1, torch.tensor(c)[:, None]).sum().item()
            n += len(c)
    return total / n


def test_sft_distillation_into_another_architecture_and_tokenizer(tmp_path):
    from thinkrl.data import load_dataset
    from thinkrl.rewards import get_reward

    rows = load_dataset("embedded", "train")[:40]  # the last 16 are held out (eval.size)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"question": r["question"], "answer": r["answer"]} for r in rows])
    student_tok = student_bpe_tokenizer()
    assert student_tok.get_vocab() != load_tokenizer("embedded").get_vocab()
    student = save_student(tmp_path / "llama", student_tok, "llama")
    overrides = ["sample.n=3", "sample.temperature=0.6", "sample.max_new_tokens=64", "eval.size=16",
                 "eval.max_new_tokens=48", "sft.train.epochs=40", "sft.train.batch_size=8", "sft.train.micro_batch_size=8",
                 "sft.optim.lr=3e-3", "sft.optim.schedule=constant", "sft.train.save_every=0"]
    out = tmp_path / "run"
    assert cli_main(["distill", "--teacher", "embedded", "--student", student, "--prompts", prompts, "--out", str(out),
                 "--no-progress", *overrides]) == 0
    summary = json.loads((out / "summary.json").read_text())
    kept = [json.loads(line) for line in (out / "distill.jsonl").read_text().splitlines()]
    assert summary["samples"] == 72 and summary["kept"] == len(kept) > 5
    assert summary["kept"] + sum(summary["dropped"].values()) == 72
    # every kept sample is a correct, well-formed teacher answer with its provenance
    assert get_reward("accuracy")([r["response"] for r in kept], answer=[r["answer"] for r in kept]) == [1.0] * len(kept)
    assert all(r["teacher"] == "embedded" and 0 <= r["sample_index"] < 3 and r["prompt_id"] in range(24) for r in kept)
    # the text round-trips through the student's own tokenizer
    final_tok = load_tokenizer(str(out / "student"))
    assert all(round_trips(final_tok, r["prompt"]) and round_trips(final_tok, r["response"]) for r in kept)
    assert final_tok.get_vocab() == student_tok.get_vocab()
    # the student learned the teacher's text and its format
    before, after = response_nll(student, kept), response_nll(str(out / "student"), kept)
    assert after < 0.2 * before, (before, after)
    assert summary["student_before"]["eval/format_rate"] == 0.0
    assert summary["student_after"]["eval/format_rate"] >= 0.5, summary


def test_an_existing_dataset_is_reused_and_checked_against_the_prompts_answers(tmp_path):
    from thinkrl.data import DataError
    from thinkrl.distill.run import DistillDataConfig, dataset_samples, load_prompts

    good12, good7 = " <think>5+7=12</think> <answer>12</answer>", " <think>3+4=7</think> <answer>7</answer>"
    hi = " <think>greet</think> <answer>hi</answer>"
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"question": "What is 5+7?", "answer": "12"},
                                                 {"question": "What is 3+4?", "answer": "7"}])
    rows = [{"prompt": "What is 5+7?", "response": good12}, {"prompt": "What is 5+7?", "response": good7},
            {"prompt": "What is 3+4?", "response": good7, "model": "stage2"}, {"prompt": "Say hi", "response": hi}]
    d = DistillDataConfig(prompts=prompts, dataset=write_jsonl(tmp_path / "stage3.jsonl", rows))
    samples = dataset_samples(d, load_prompts(d, 0)[0])
    assert [s.get("answer") for s in samples] == ["12", "12", "7", None]  # answers joined by question
    assert [(s["prompt_id"], s["sample_index"]) for s in samples] == [(0, 0), (0, 1), (1, 0), (2, 0)]
    assert samples[2]["teacher"] == "stage2" and samples[0]["teacher"] == d.dataset
    kept, dropped = filter_samples(samples, FilterConfig())
    assert [s["completion"] for s in kept] == [good12, good7, hi] and dropped == {"wrong": 1}
    (tmp_path / "stage3.jsonl").write_text((tmp_path / "stage3.jsonl").read_text() + '{"prompt": "x"}\n')
    with pytest.raises(DataError, match=r"stage3.jsonl:5: missing field 'response'"):
        dataset_samples(d, [])


def test_impossible_settings_fail_at_start_with_what_to_change():
    from thinkrl.config import ConfigError

    with pytest.raises(ConfigError, match="no student: give --student"):
        load_distill_config(None, [])
    with pytest.raises(ConfigError, match=r"sft.model.path is set by distill; set student.path \(--student\)"):
        load_distill_config(None, ["student.path=s", "sft.model.path=other"])
    with pytest.raises(ConfigError, match="filter.format 'strict'"):
        load_distill_config(None, ["student.path=s", "filter.format=strict"])
    with pytest.raises(ConfigError, match="sft.train.batch_size=7 is not divisible by sft.train.micro_batch_size=8"):
        load_distill_config(None, ["student.path=s", "sft.train.batch_size=7"])
    with pytest.raises(ConfigError, match="drop --data or --on-policy"):
        load_distill_config(None, ["student.path=s", "mode=on_policy", "data.dataset=x.jsonl"])


def test_the_tiny_example_config_loads_and_distils_the_embedded_pair():
    from pathlib import Path

    from thinkrl.distill.run import sft_config
    from thinkrl.policy import resolve_model_path

    path = Path(__file__).parent.parent / "configs" / "distill-tiny.yaml"
    cfg = load_distill_config(path, ["run.threads=1"])  # every key is a real one, every value valid
    assert (cfg.mode, cfg.teacher.path, cfg.student.path) == ("sft", "embedded", "embedded-student")
    assert cfg.run.threads == 1 and cfg.sft.optim.lr == 2e-3 and cfg.sft.train.save_every == 0  # the file was read
    s = sft_config(cfg, "distill.jsonl")
    assert (s.model.path, s.data.train, s.data.template) == ("embedded-student", "distill.jsonl", "r1_zero")
    # the student has another vocabulary, yet spells the teacher's prompts and answers exactly
    student, teacher = load_tokenizer("embedded-student"), load_tokenizer("embedded")
    assert Path(resolve_model_path("embedded-student")).is_dir() and student.get_vocab() != teacher.get_vocab()
    text = " <think>7+5=12 4+8+1=13 3+0+1=4</think> <answer>432</answer>"
    assert round_trips(student, render("What is 347+85?")) and round_trips(student, text)


def test_prompts_and_held_out_rows_come_from_the_named_files(tmp_path):
    from thinkrl.data import DataError
    from thinkrl.distill.run import DistillDataConfig, load_prompts
    from thinkrl.task import TINY_DIR

    train = [json.loads(x) for x in (TINY_DIR / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (TINY_DIR / "test.jsonl").read_text().splitlines()]
    prompts, held = load_prompts(DistillDataConfig(max_prompts=5), 3)  # embedded: its train and test splits
    assert [(p["id"], p["question"], p["answer"], p["level"]) for p in prompts] == \
        [(i, r["question"], r["answer"], r["level"]) for i, r in enumerate(train[:5])]
    assert [(h["question"], h["answer"]) for h in held] == [(r["question"], r["answer"]) for r in test[:3]]
    # an explicit held-out file with its own column names; prompts without answers are fine
    q = write_jsonl(tmp_path / "q.jsonl", [{"q": "What is 1+2?"}, {"q": "Say hi", "a": None}])
    ev = write_jsonl(tmp_path / "ev.jsonl", [{"q": "What is 2+2?", "a": 4}, {"q": "What is 3+3?", "a": "6"}])
    d = DistillDataConfig(prompts=q, eval=ev, question_field="q", answer_field="a")
    prompts, held = load_prompts(d, 10)
    assert prompts == [{"id": 0, "question": "What is 1+2?"}, {"id": 1, "question": "Say hi"}]
    assert [(h["question"], h["answer"]) for h in held] == [("What is 2+2?", "4"), ("What is 3+3?", "6")]
    (tmp_path / "ev.jsonl").write_text('{"q": "What is 2+2?"}\n')
    with pytest.raises(DataError, match=r"ev.jsonl:1: missing field 'a'"):
        load_prompts(d, 10)
