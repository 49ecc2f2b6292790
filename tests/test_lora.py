"""LoRA through PEFT (`model.lora`, `student.lora`): with β > 0 the reference is the policy with
its adapters off (the base model's log-probs exactly, no second copy); only the adapters learn
and the base weights stay bit-identical; checkpoints hold the adapter (PEFT loads it) and, with
lora.merge, a merged model (transformers loads it); a stopped run resumes into the
uninterrupted one; SFT with LoRA learns; distillation trains a LoRA student; impossible
settings fail at start."""

import json
import logging

import pytest
import torch

from tests.test_run_context import at_step, ctrl_c, grpo, same_lines, same_weights
from tests.test_distill import response_nll
from tests.test_sft import task_rows, write_jsonl
from thinkrl import checkpoint as ckpt
from thinkrl.adapters import AdaptersOff
from thinkrl.cli import main as cli_main
from thinkrl.config import ConfigError, load_config
from thinkrl.distill.config import load_distill_config
from thinkrl.metrics import read_metrics
from thinkrl.policy import SequenceBatch, completion_logprobs, load_model, load_tokenizer, resolve_model_path
from thinkrl.rollout import SamplingParams
from thinkrl.train.grpo import GRPOTrainer
from thinkrl.train.sft import load_sft_config, run_sft

CPU = torch.device("cpu")
LORA = {"model.lora.r": 8, "model.lora.alpha": 16}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def base_weights(model) -> dict:
    """The base model's own weights of a PEFT model, named as in the plain model."""
    return {k.replace("base_layer.", ""): v for k, v in model.get_base_model().state_dict().items() if "lora_" not in k}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """Two GRPO steps with LoRA and β > 0 on the embedded model, its checkpoint with merged/."""
    torch.set_num_threads(1)
    from thinkrl.data import load_dataset

    out = tmp_path_factory.mktemp("lora_grpo")
    data = write_jsonl(out / "train.jsonl", load_dataset("embedded", "train")[:16])  # the task, fewer rows to prepare
    overrides = {**LORA, "data.train": data, "model.lora.merge": True, "objective.beta": 0.04, "train.steps": 2, "train.save_every": 0,
                 "train.prompts_per_step": 2, "rollout.group_size": 4, "rollout.max_new_tokens": 48, "eval.every": 0,
                 "data.eval": "none", "run.progress": False, "optim.lr": 1e-2, "optim.warmup_steps": 0}
    trainer = GRPOTrainer(load_config(None, [f"{k}={v}" for k, v in overrides.items()]), out)
    adapters_before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    summary = trainer.run()
    # a batch the policy sampled, groups sharing their prompt (the shared-prompt forward)
    params = SamplingParams(n=3, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=12, stop=["</answer>"])
    r = trainer.engine.generate(trainer.train_prompts[:2], params, generator=torch.Generator().manual_seed(1))
    batch = SequenceBatch.build(r.prompt_ids, r.completion_ids, trainer.pad_id, CPU, r.group_ids)
    return trainer, adapters_before, summary, batch


def test_the_reference_is_the_base_model_with_adapters_off_and_only_adapters_learn(lora_run):
    trainer, before, summary, batch = lora_run
    kl = [r["kl"] for r in read_metrics(trainer.run_dir)[1:]]
    assert summary["steps"] == 2 and kl[0] == 0 < kl[1]  # π_θ = π_ref until the adapters (B = 0 at first) move
    # no second copy: π_ref is the policy itself, run with its adapters off, and holds no weights
    assert isinstance(trainer.ref, AdaptersOff) and trainer.ref.model is trainer.policy
    assert list(trainer.ref.parameters()) == []
    assert {id(v) for v in vars(trainer).values() if isinstance(v, torch.nn.Module)} == {id(trainer.policy)}
    assert trainer.engine.model is trainer.policy
    fresh = load_model("embedded", CPU, requires_grad=False)
    with torch.no_grad():
        want = completion_logprobs(fresh, batch)
        policy = completion_logprobs(trainer.policy, batch)
    ref = trainer._logprobs(trainer.ref, batch, len(batch))
    mask = batch.completion_mask
    assert torch.equal(ref[mask], want[mask])  # exactly the base model's, after two updates of the adapters
    assert (policy[mask] - want[mask]).abs().max() > 1e-3  # while the policy has moved
    # the base weights are the initial model's bit for bit; every adapter moved
    plain = fresh.state_dict()
    weights = base_weights(trainer.policy)
    assert weights.keys() == plain.keys() and all(torch.equal(weights[k], plain[k]) for k in plain)
    trainable = {n: p for n, p in trainer.policy.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(not torch.equal(p, before[n]) for n, p in trainable.items())
    optimized = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert len(optimized) == len(trainable) and {id(p) for p in optimized} == {id(p) for p in trainable.values()}
    # a backward pass reaches the adapters alone
    trainer.optimizer.zero_grad(set_to_none=True)
    completion_logprobs(trainer.policy, batch)[mask].sum().backward()
    got = {n for n, p in trainer.policy.named_parameters() if p.grad is not None}
    assert got == set(trainable)
    trainer.optimizer.zero_grad(set_to_none=True)


def test_checkpoint_holds_an_adapter_peft_loads_and_a_merged_model(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trainer, _, summary, batch = lora_run
    final = ckpt.latest_checkpoint(trainer.run_dir / "checkpoints")
    assert str(final) == summary["final_checkpoint"] and final.name == "step_000002" and ckpt.verify(final)
    assert (final / "adapter_model.safetensors").exists() and not (final / "config.json").exists()
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == resolve_model_path("embedded") and config["r"] == 8
    mask = batch.completion_mask
    with torch.no_grad():
        want = completion_logprobs(trainer.policy, batch)[mask]
        base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
        loaded = {"peft": PeftModel.from_pretrained(base, final),
                  "merged": AutoModelForCausalLM.from_pretrained(final / "merged"),
                  "load_model": load_model(str(final), CPU, requires_grad=False)}
        for name, model in loaded.items():
            torch.testing.assert_close(completion_logprobs(model, batch)[mask], want, atol=1e-5, rtol=0, msg=name)
    assert not any("lora" in k for k in loaded["merged"].state_dict())
    text = "What is 347+85? <think> 7+5=12 </think> <answer>432</answer>"
    assert load_tokenizer(str(final))(text)["input_ids"] == trainer.tokenizer(text)["input_ids"]
    assert load_tokenizer(str(final / "merged"))(text)["input_ids"] == trainer.tokenizer(text)["input_ids"]


def test_a_stopped_lora_run_resumes_into_the_uninterrupted_one(tmp_path, qwen2_dir):
    lora = {"model.lora.r": 4, "model.lora.alpha": 8, "objective.beta": 0.04, "optim.lr": 1e-2, "data.eval": "none"}
    whole = grpo(qwen2_dir, tmp_path, tmp_path / "whole", **lora)
    assert whole.run()["steps"] == 4
    first = at_step(grpo(qwen2_dir, tmp_path, tmp_path / "part", **lora), 3, ctrl_c)
    assert first.run()["interrupted"] and first.step == 3
    again = grpo(qwen2_dir, tmp_path, tmp_path / "part", resume=True, **lora)
    assert again.run()["steps"] == 4 and again.resumed_from.name == "step_000003"
    same_weights(whole.policy, again.policy)  # adapters and base alike
    same_lines(read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "part"))
    # a checkpoint of other adapters, or of every weight, is refused by name
    with pytest.raises(ValueError, match=r"does not match this run's \(r 4 there, 2 here"):
        grpo(qwen2_dir, tmp_path, tmp_path / "part", resume=True, **{**lora, "model.lora.r": 2})
    with pytest.raises(ValueError, match="holds a LoRA adapter but this run trains every weight"):
        grpo(qwen2_dir, tmp_path, tmp_path / "part", resume=True, **{**lora, "model.lora.r": 0})


def test_sft_with_lora_learns_and_its_final_model_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    rows = [{"prompt": r["prompt"], "response": " <think>0</think> <answer>0</answer>"} for r in task_rows(8)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    overrides = {"data.train": data, "train.epochs": 12, "train.batch_size": 8, "train.micro_batch_size": 8,
                 "optim.lr": 1e-2, "optim.schedule": "constant", "optim.warmup_steps": 1, "run.progress": False,
                 "run.threads": 1, "train.save_every": 0, "train.log_every": 1, **LORA}
    summary = run_sft(load_sft_config(None, [f"{k}={v}" for k, v in overrides.items()]), tmp_path / "run")
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0] / 20, losses  # measured: 4.71 -> 0.014
    final = tmp_path / "run" / "final"
    assert summary["final_dir"] == str(final) and (final / "adapter_config.json").exists()
    assert not (final / "merged").exists()  # lora.merge is off
    # measured directly, through transformers' own loading of the adapter directory
    before, after = response_nll(resolve_model_path("embedded"), rows), response_nll(str(final), rows)
    assert after < before / 20, (before, after)
    ids = torch.tensor([load_tokenizer(str(final))(rows[0]["prompt"] + rows[0]["response"])["input_ids"]])
    with torch.no_grad():  # merged by thinkrl, applied unmerged by transformers: float32 rounding apart (~1e-5)
        mine = load_model(str(final), CPU, requires_grad=False)(ids).logits.log_softmax(-1)
        theirs = AutoModelForCausalLM.from_pretrained(final)(ids).logits.log_softmax(-1)
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)


def test_distillation_trains_a_lora_student(tmp_path):
    rows = task_rows(8)
    data = write_jsonl(tmp_path / "stage3.jsonl", rows)
    out = tmp_path / "run"
    args = ["distill", "--teacher", "embedded", "--student", "embedded-student", "--data", str(data), "--prompts", "embedded",
            "--out", str(out),
            "--no-progress", "student.lora.r=4", "student.lora.alpha=8", "student.lora.merge=true", "eval.size=4",
            "eval.max_new_tokens=8", "sft.train.epochs=1", "sft.train.batch_size=4", "sft.train.micro_batch_size=4",
            "sft.train.save_every=0", "run.threads=1"]
    assert cli_main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    student = out / "student"
    assert summary["student_dir"] == str(student) and "eval/accuracy" in summary["student_after"]
    assert json.loads((student / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        resolve_model_path("embedded-student")
    merged = load_model(str(student / "merged"), CPU, requires_grad=False)
    adapted = load_model(str(student), CPU, requires_grad=False)
    for k, v in merged.state_dict().items():
        torch.testing.assert_close(adapted.state_dict()[k], v, atol=1e-6, rtol=0, msg=k)
    assert json.loads((student / "adapter_config.json").read_text())["r"] == 4


def test_impossible_lora_settings_fail_at_start(caplog):
    def fails(load, overrides, pattern):
        with pytest.raises(ConfigError, match=pattern):
            load(None, overrides)

    fails(load_config, ["model.lora.r=-1"], r"model.lora.r=-1: the adapter rank must be a whole number >= 1")
    fails(load_config, ["model.lora.r=8", "model.lora.alpha=0"], r"model.lora.alpha=0")
    fails(load_config, ["model.lora.r=8", "model.lora.dropout=1.0"], r"model.lora.dropout=1.0: must be in \[0, 1\)")
    fails(load_config, ["model.lora.r=8", "model.lora.target_modules=[]"], r"model.lora.target_modules=\[\]")
    fails(load_config, ["model.lora.r=8", "model.lora.target_modules=[all-linear, q_proj]"], "all-linear] alone")
    fails(load_config, ["model.lora.r=8", "objective.beta=0.04", "objective.ref_reset_every=400"],
          r"objective.ref_reset_every=400 with model.lora.r=8: .* set objective.ref_reset_every=0")
    fails(load_config, ["model.lora.r=8", "train.parallel=fsdp"], "use train.parallel=ddp")
    fails(load_sft_config, ["data.train=x.jsonl", "model.lora.alpha=-2"], r"model.lora.alpha=-2")
    with pytest.raises(ConfigError, match=r"student.lora.dropout=2.0") as e:
        load_distill_config(None, ["student.path=s", "student.lora.r=4", "student.lora.dropout=2.0"])
    assert "sft.model.lora" not in str(e.value)  # said once, under the key the user set
    fails(load_distill_config, ["student.path=s", "sft.model.lora.r=4"], r"sft.model.lora is set by distill; set "
          "student.lora instead")
    with caplog.at_level(logging.WARNING, logger="thinkrl"):
        load_config(None, ["model.lora.r=8", "model.lora.dropout=0.1"])
    assert "model.lora.dropout=0.1: GRPO's ratio and KL" in caplog.text
