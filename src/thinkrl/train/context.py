"""One training run's life, the same for every loop here (GRPO, SFT, reward models, on-policy
distillation): the seed and torch's thread count, the run directory's checkpoints and
--resume, saving a checkpoint or saying why it was not saved, the graceful stop, the progress
bar, the NaN/inf policy, the atomic final save and summary.json. A loop keeps only its own:
its step, its evaluation and its summary's fields.

A loop subclasses `TrainingRun`. Its __init__ (decorated with `setup`, so that a failure gives
torch's thread count back) calls `begin` first, `track` once its model, optimizer, scheduler
and data order exist, then `open`; its run() (decorated with `gives_threads_back`) calls
`drive` with its step, then `save_final` where it leaves a model, and `save_summary`. With
several processes (GRPO under torchrun) rank 0 writes every file and every process stops at
the same step; at one process that is plain single-process code.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import shutil
import time
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from .. import distributed, sharding
from ..metrics import MetricsWriter
from ..checkpoint import save_pretrained
from ..progress import LIVE, Progress
from ..rundir import write_text_atomic
from .loop import BadSteps, StopRequest, set_threads

log = logging.getLogger("thinkrl")


class ResumeError(ValueError):
    """--resume cannot continue the run; nothing in the run directory was changed."""


class NoMetrics:
    """The metrics writer of processes other than rank 0: rank 0 writes the whole batch's."""

    def write(self, row: dict) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def setup(init):
    """Decorates a loop's __init__: should it fail, torch's thread count is given back."""
    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except BaseException:
            self.give_threads_back()
            raise
    return wrapper


def gives_threads_back(run):
    """Decorates a loop's run(): torch's thread count is the caller's again when it ends, however
    it ends (the run's own count holds until then, its final save and summary included)."""
    @functools.wraps(run)
    def wrapper(self, *args, **kwargs):
        try:
            return run(self, *args, **kwargs)
        finally:
            self.give_threads_back()
    return wrapper


class TrainingRun:
    """The part of a training loop every loop shares (see the module docstring).

    Attributes: run_dir, step, bad (`loop.BadSteps`), wall_before (seconds of the earlier
    segments of a resumed run), t_start, resumed_from, interrupted, metrics, rank, world,
    is_main, checkpoint_seconds (how long the last checkpoint took; the loop may log it).
    Class attributes a loop may set: `desc` and `live` (the progress bar's label and its
    live line, see `progress.Progress`) and `final_name` (the directory of its final model)."""

    desc, live, sticky = "train", LIVE, ("eval/accuracy",)
    final_name: str | None = None

    # ------------------------------------------------------------------ start
    def begin(self, run_dir: str | Path, seed: int, threads: int, max_bad_steps: int, lr: str = "optim.lr",
              clip: str = "optim.max_grad_norm", limit: str = "train.max_bad_steps",
              on_checkpoint_error: str = "stop", checkpoint_error_setting: str | None = None) -> None:
        """Set torch's thread count (0: leave it; given back when the run ends) and seed torch
        and Python. `lr`, `clip`, `limit` name the loop's settings in messages; a checkpoint
        that cannot be written stops the run unless `on_checkpoint_error` is "continue"
        (`checkpoint_error_setting` names that setting, where the loop has one)."""
        self.threads_before = set_threads(threads)
        random.seed(seed)
        torch.manual_seed(seed)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.step, self.wall_before, self.t_start = 0, 0.0, None
        self.bad = BadSteps(max_bad_steps, lr=lr, clip=clip, setting=limit)
        self.on_checkpoint_error, self.checkpoint_error_setting = on_checkpoint_error, checkpoint_error_setting
        self.resumed_from, self.interrupted, self.checkpoint_seconds = None, False, None
        self.metrics = NoMetrics()

    def give_threads_back(self) -> None:
        """torch's thread count, and its deterministic-algorithms setting, as they were before the run."""
        before = getattr(self, "threads_before", None)
        if before is not None:
            torch.set_num_threads(before)
        deterministic = getattr(self, "deterministic_before", None)
        if deterministic is not None:
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
            self.deterministic_before = None

    def track(self, model, tokenizer, optimizer, scheduler, sampler=None, generator=None, keep: int = 2,
              sharded_optimizer: bool = False) -> None:
        """What a checkpoint holds besides the loop's own `extra_state`: the weights (and the
        tokenizer, so that a checkpoint loads as a model), the optimizer, the scheduler, the data
        order (`state_dict`/`load_state_dict`), a sampling generator, every random stream.
        `sharded_optimizer` (train.parallel=fsdp): the optimizer state goes into the checkpoint's
        optimizer/ directory, one shard per process (`sharding.save_optimizer`), not into
        trainer_state.pt, so that it loads into any number of processes."""
        self._model, self._tokenizer, self._optimizer, self._scheduler = model, tokenizer, optimizer, scheduler
        self._sampler, self._generator, self._keep = sampler, generator, keep
        self._sharded_optimizer = sharded_optimizer
        if next(model.parameters()).device.type == "cpu":  # the same seed, the same run (see below)
            self.deterministic_before = (torch.are_deterministic_algorithms_enabled(),
                                         torch.is_deterministic_algorithms_warn_only_enabled())
            # with several threads some CPU kernels round differently from run to run (measured: three
            # runs of the main job at 2 threads parted at steps 10-12; with this, three were identical)
            torch.use_deterministic_algorithms(True, warn_only=True)

    def update_or_skip(self, cause: str) -> None:
        """The end of one step: the optimizer step, or, for a NaN/inf loss or gradient (`cause`),
        none at all (the gradients are dropped); the schedule counts the step either way, as
        `BadSteps` does. GRPO, whose step may hold μ updates, does this itself."""
        if cause:
            log.warning("step %d skipped: %s", self.step + 1, cause)
            self._optimizer.zero_grad(set_to_none=True)
        else:
            self._optimizer.step()
        self._scheduler.step()
        self.bad.record(cause)
        self.step += 1

    def open(self, resume: bool, config_yaml: str | None = None, tensorboard: bool = False,
             wandb_project: str | None = None, config: dict | None = None) -> None:
        """The metrics (rank 0 writes them); on --resume, continue from the newest intact
        checkpoint; then config.yaml (only once the run could start: a failed --resume changes
        nothing). A fresh run in a directory an earlier run used starts a fresh log, and the
        earlier run's checkpoints and final model go (never resumed from, nor taken for its)."""
        if self.is_main:
            self.metrics = MetricsWriter(self.run_dir, tensorboard, wandb_project, config)
            if not resume and (self.run_dir / "metrics.jsonl").exists():
                log.warning("%s holds an earlier run; starting afresh (use --resume to continue it)", self.run_dir)
                self.metrics.truncate_after(-1)
                for old in ("checkpoints", self.final_name):
                    if old:
                        shutil.rmtree(self.run_dir / old, ignore_errors=True)
        if resume:
            self.resumed_from = self._resume()
        if config_yaml is not None and self.is_main:
            write_text_atomic(self.run_dir / "config.yaml", config_yaml)

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict:
        """The loop's own part of a checkpoint's trainer state."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def _random_state(self) -> dict:
        return {
            "generator": self._generator.get_state() if self._generator is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(),
        }

    def _set_random_state(self, s: dict) -> None:
        if self._generator is not None and s.get("generator") is not None:
            self._generator.set_state(s["generator"])
        if s.get("torch_rng") is not None:
            torch.set_rng_state(s["torch_rng"])
        if s.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda_rng"])
        if s.get("python_rng") is not None:
            random.setstate(s["python_rng"])

    def wall(self) -> float:
        """Seconds of training so far, the earlier segments of a resumed run included."""
        return self.wall_before + (time.time() - self.t_start if self.t_start is not None else 0.0)

    def state_dict(self) -> dict:
        """The trainer state a checkpoint holds. With several processes every one must call it:
        it gathers each process's random streams under "ranks" (the top-level ones are rank 0's)."""
        state = {
            "step": self.step,
            "optimizer": None if self._sharded_optimizer else self._optimizer.state_dict(),
            "scheduler": self._scheduler.state_dict(),
            "sampler": self._sampler.state_dict() if self._sampler is not None else None,
            **self._random_state(),
            "wall_seconds": self.wall(),
            "bad_steps": self.bad.count,
            **self.extra_state(),
        }
        if self.world > 1:
            state["ranks"] = distributed.gather_objects(self._random_state())
        return state

    def _resume(self) -> Path | None:
        # rank 0 chooses; every process loads the weights and the trainer state from it
        root = self.run_dir / "checkpoints"
        found, broken = distributed.from_main(ckpt.find_resumable(root) if self.is_main else None)
        if broken:  # never start over silently over a run's history
            raise ResumeError(f"--resume: no intact checkpoint under {root} ({broken}); nothing was changed. "
                              f"Restore one, or start the run afresh with --overwrite")
        if found is None:
            log.warning("--resume: the run saved no checkpoint yet under %s; starting from step 0", root)
            self.metrics.truncate_after(-1)
            return None
        s = ckpt.load_trainer_state(found)
        if (s["optimizer"] is None) != self._sharded_optimizer:
            raise ResumeError(f"--resume: {found} was written with train.parallel="
                              f"{'fsdp' if s['optimizer'] is None else 'ddp'}; resume with that setting")
        if sharding.is_sharded(self._model):
            sharding.load_full_state(self._model, ckpt.read_weights(found))
        else:
            ckpt.load_weights(self._model, found)
        if self._sampler is not None:
            self._sampler.load_state_dict(s["sampler"])  # first: a DataError if the data changed size
        if self._sharded_optimizer:
            sharding.load_optimizer(self._model, self._optimizer, found / "optimizer")
        else:
            self._optimizer.load_state_dict(s["optimizer"])
        self._scheduler.load_state_dict(s["scheduler"])
        ranks = s.get("ranks", [s])  # each process's random streams (one process: the top-level ones)
        if len(ranks) != self.world and self.is_main:
            log.warning("the checkpoint was written by %d process(es), this run has %d: the sampling streams of "
                        "processes beyond the checkpoint's start afresh, so the run will not reproduce an "
                        "uninterrupted one", len(ranks), self.world)
        if self.rank < len(ranks):
            self._set_random_state(ranks[self.rank])
        self.step, self.wall_before, self.bad.count = s["step"], s["wall_seconds"], s.get("bad_steps", 0)
        self.load_extra_state(s)
        self.metrics.truncate_after(self.step)
        log.info("resumed from %s (step %d)", found, self.step)
        return found

    # ------------------------------------------------------------------ saving
    def save(self) -> Path | None:
        """Write a checkpoint (rank 0; with several processes every one must call it)."""
        state = self.state_dict()
        model_state = sharding.full_state_dict(self._model)  # a sharded model's, gathered to rank 0
        root = self.run_dir / "checkpoints"
        moved = {"optimizer": self._save_sharded_optimizer(root)} if self._sharded_optimizer else None
        if not self.is_main:
            return None
        try:
            return ckpt.save_checkpoint(root, self.step, self._model, self._tokenizer, state, keep=self._keep,
                                        model_state=model_state, move_in=moved)
        finally:
            if moved:
                shutil.rmtree(moved["optimizer"], ignore_errors=True)  # left only when the checkpoint failed

    def _save_sharded_optimizer(self, root: Path) -> Path:
        """Every process writes its optimizer shard beside the checkpoints; a failure on any
        process is every process's CheckpointError (the checkpoint is not written)."""
        path = root / f".optimizer_step_{self.step:06d}"
        if self.is_main:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(path, ignore_errors=True)
        distributed.barrier()
        error = None
        try:
            sharding.save_optimizer(self._model, self._optimizer, path)
        except Exception as e:  # disk full on this process's filesystem, ...
            error = f"{type(e).__name__}: {e}"
        errors = [e for e in distributed.gather_objects(error) if e]
        if errors:
            if self.is_main:
                shutil.rmtree(path, ignore_errors=True)
            raise ckpt.CheckpointError(f"the sharded optimizer state could not be written: {errors[0]}")
        return path

    def newest_checkpoint(self) -> str:
        found = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
        return str(found) if found else "none (the run had not saved one yet)"

    def checkpoint(self) -> str | None:
        """Save; on failure (disk full, ...) say what happened and, unless told to carry on,
        return the message that stops the run (on every process). The previous checkpoint is
        untouched."""
        return distributed.from_main(self._save_or_explain())

    def _save_or_explain(self) -> str | None:
        bad = sharding.nonfinite_parameters(self._model)
        if bad:  # a checkpoint of NaN weights is worse than none: it would be resumed from
            return (f"stopped: the weights hold NaN/inf after step {self.step} ({len(bad)} tensors, e.g. {bad[0]}); "
                    f"their checkpoint was not written. The learning rate may be too high ({self.bad.lr}); the "
                    f"newest intact checkpoint is {self.newest_checkpoint()}")
        try:
            self.save()
            return None
        except OSError as e:  # checkpoint.CheckpointError included: any failure to write it
            msg = (f"could not write the checkpoint of step {self.step} ({e}); the previous checkpoint is intact: "
                   f"{self.newest_checkpoint()}")
            setting = self.checkpoint_error_setting
            if self.on_checkpoint_error == "continue":
                log.warning("%s; continuing without it (%s=continue)", msg, setting)
                return None
            return (f"stopped: {msg}. Free space" + (f" (or set {setting}=continue)" if setting else "")
                    + " and continue with --resume")

    def save_final(self, extra: dict[str, str] | None = None) -> Path | None:
        """RUN/<final_name>: the model and tokenizer in Hugging Face format, written then renamed."""
        model_state = sharding.full_state_dict(self._model)  # a sharded model's, gathered to rank 0
        if not self.is_main:
            return None
        path = self.run_dir / self.final_name
        save_pretrained(self._model, self._tokenizer, path, extra=extra, model_state=model_state)
        return path

    def save_summary(self, summary: dict) -> dict:
        """summary.json, written atomically by rank 0 (a failed write is said, not raised: the
        run's results are in metrics.jsonl and the checkpoints)."""
        if self.is_main:
            try:
                write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            except OSError as e:
                log.warning("could not write summary.json: %s", e)
        return summary

    # ------------------------------------------------------------------ the loop
    def drive(self, step, total: int, save_every: int, first=None, show: bool = True) -> str | None:
        """The run from the current step to `total`. `first()` (at step 0) gives the metrics line
        of step 0 or None; `step()` takes one training step (with its evaluation) and returns
        (the metrics line to write or None, the metrics to show). After every step: the line
        goes first (a checkpoint never exists without its step's line), then the stop checks,
        then a checkpoint at the end, on a stop request and every `save_every` steps (0: none).
        Returns the error that stopped the run, or None; `interrupted` says whether it ended
        before `total`."""
        self.t_start = time.time()
        if self.step == 0 and first is not None:
            row = first()
            if row is not None:
                self.metrics.write(row)
        progress = Progress(total, self.step, enabled=show and self.is_main, desc=self.desc, live=self.live,
                            sticky=self.sticky)
        stop = StopRequest(announce=self.is_main)
        error, stopping = None, False
        try:
            while self.step < total and not stopping:
                row, shown = step()
                last = self.step == total
                try:
                    if row is not None:
                        self.metrics.write(row)
                except OSError as e:  # a full disk: stop here; the newest checkpoint stays the way back
                    error = (f"stopped: could not write metrics.jsonl at step {self.step} ({e}); free space and "
                             f"continue with --resume from {self.newest_checkpoint()}")
                    break
                progress.update(shown)
                stopping = distributed.any_true(stop.requested is not None)  # every process stops at one step
                if self.bad.exhausted:  # the checkpoint of the last good step stays the newest
                    error = self.bad.message(self.newest_checkpoint())
                    break
                if last or stopping or (save_every and self.step % save_every == 0):
                    t = time.perf_counter()
                    error = self.checkpoint()
                    self.checkpoint_seconds = time.perf_counter() - t
                    if error:
                        break
        finally:
            stop.restore()
            progress.close()
        self.interrupted = error is not None or self.step < total
        if error and self.is_main:
            log.error("%s", error)
        elif self.interrupted and self.is_main:
            print(f"\nstopped at step {self.step} ({stop.requested or 'stop requested'}); checkpoint written; "
                  f"continue with --resume")
        self.metrics.close()
        return error
