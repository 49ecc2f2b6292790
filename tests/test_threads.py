"""torch's thread count (and deterministic-algorithms setting) is the caller's again when a
piece of work ends: a training run, a pipeline stage (the pipeline runs its stages in one
process, so one stage's `threads` must not reach the next), a reward model's training."""

import pytest
import torch

from tests.test_trainer import random_model_overrides, small_dataset
from thinkrl.config import load_config
from thinkrl.train.loop import threads_restored
from thinkrl.pipeline.stages import KINDS
from thinkrl.train.grpo import GRPOTrainer


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)  # the caller's setting, which a run must give back
    yield
    torch.set_num_threads(before)


def test_threads_restored_gives_the_count_back_even_after_an_error(two_threads):
    with pytest.raises(RuntimeError):
        with threads_restored():
            torch.set_num_threads(1)
            raise RuntimeError("a stage failed")
    assert torch.get_num_threads() == 2


def test_every_pipeline_stage_kind_gives_the_thread_count_back(two_threads, tmp_path):
    assert all(getattr(fn, "__wrapped__", None) is not None for fn in KINDS.values())
    with pytest.raises(Exception):  # a real stage that sets threads=1 and then fails on its input
        KINDS["sft"](type("Ctx", (), {"settings": {"run": {"threads": 1}, "data": {"train": "missing.jsonl"}},
                                      "out": tmp_path, "resume": False, "name": "sft"})())
    assert torch.get_num_threads() == 2


def test_a_training_run_gives_the_thread_count_back(two_threads, tmp_path, qwen2_dir):
    cfg = load_config(None, random_model_overrides(qwen2_dir, small_dataset(tmp_path), **{
        "train.steps": 1, "run.threads": 1, "eval.every": 0, "train.save_every": 0}))
    assert not torch.are_deterministic_algorithms_enabled()
    trainer = GRPOTrainer(cfg, tmp_path / "run")
    assert torch.get_num_threads() == 1  # the run's own setting while it works
    assert torch.are_deterministic_algorithms_enabled()  # on CPU: the same seed gives the same run at any thread count
    trainer.run()
    assert torch.get_num_threads() == 2
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting again


def test_a_distillation_gives_the_thread_count_back(two_threads, tmp_path):
    from thinkrl.distill.run import load_distill_config, run_distill

    cfg = load_distill_config(None, [
        "teacher.path=embedded", "student.path=embedded-student", "data.prompts=embedded", "data.max_prompts=4",
        "sample.n=1", "sample.max_new_tokens=24", "eval.size=0", "filter.correct=false", "filter.format=none",
        "sft.train.epochs=1", "sft.train.batch_size=4", "sft.train.micro_batch_size=4", "run.threads=1",
        "run.progress=false"])
    run_distill(cfg, tmp_path / "run")
    assert torch.get_num_threads() == 2
