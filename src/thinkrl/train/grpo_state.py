"""What a GRPO run keeps and leaves behind (the `RunState` part of `trainer.GRPOTrainer`): the
trainer state a checkpoint holds (optimizer, scheduler, question order, every process's random
streams), resuming from the newest intact checkpoint, saving one or saying why it could not be
saved (a full disk, NaN weights), and the run's summary.json and report.html."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from .. import distributed
from ..metrics import read_metrics
from ..evaluation.report import write_report
from ..rundir import write_text_atomic

log = logging.getLogger("thinkrl")


class NoMetrics:
    """The metrics writer of processes other than rank 0: rank 0 writes the whole batch's."""

    def write(self, row: dict) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class RunState:
    """Checkpoints, resume and the summary of a `GRPOTrainer` (whose attributes these methods use:
    cfg, run_dir, policy, ref, tokenizer, optimizer, scheduler, sampler, generator, metrics, step,
    rank, world, is_main, wall_before, bad (a `loop.BadSteps`), t_start)."""

    def _random_state(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(),
        }

    def _set_random_state(self, s: dict) -> None:
        self.generator.set_state(s["generator"])
        torch.set_rng_state(s["torch_rng"])
        if s.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda_rng"])
        random.setstate(s["python_rng"])

    def state_dict(self) -> dict:
        """The trainer state a checkpoint holds. With several processes every one must call it:
        it gathers each process's random streams under "ranks" (the top-level ones are rank 0's)."""
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            **self._random_state(),
            "ref_model": self.ref.state_dict() if self.ref is not None and self.cfg.objective.ref_reset_every else None,
            "wall_seconds": self.wall_before + (time.time() - self.t_start if hasattr(self, "t_start") else 0.0),
            "bad_steps": self.bad.count,
        }
        if self.world > 1:
            state["ranks"] = distributed.gather_objects(self._random_state())
        return state

    def _resume(self):
        # rank 0 chooses; every process loads the weights and the trainer state from it
        found, broken = distributed.from_main(ckpt.find_resumable(self.run_dir / "checkpoints") if self.is_main
                                              else None)
        if broken:  # never start over silently over a run's history
            raise ValueError(f"--resume: no intact checkpoint under {self.run_dir / 'checkpoints'} ({broken}); "
                             f"nothing was changed. Restore one, or start the run afresh with --overwrite")
        if found is None:
            log.warning("--resume: the run saved no checkpoint yet under %s; starting from step 0",
                        self.run_dir / "checkpoints")
            self.metrics.truncate_after(-1)
            return None
        ckpt.load_weights(self.policy, found)
        s = ckpt.load_trainer_state(found)
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.sampler.load_state_dict(s["sampler"])
        ranks = s.get("ranks", [s])  # each process's random streams (one process: the top-level ones)
        if len(ranks) != self.world and self.is_main:
            log.warning("the checkpoint was written by %d process(es), this run has %d: the sampling streams of "
                        "processes beyond the checkpoint's start afresh, so the run will not reproduce an "
                        "uninterrupted one", len(ranks), self.world)
        if self.rank < len(ranks):
            self._set_random_state(ranks[self.rank])
        if self.ref is not None and s.get("ref_model") is not None:
            self.ref.load_state_dict(s["ref_model"])
        self.step, self.wall_before, self.bad.count = s["step"], s["wall_seconds"], s["bad_steps"]
        self.metrics.truncate_after(self.step)
        log.info("resumed from %s (step %d)", found, self.step)
        return found

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0; with several processes every one must call it)."""
        t = self.cfg.train
        state = self.state_dict()
        if not self.is_main:
            return None
        return ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, self.policy, self.tokenizer,
                                    state, keep=t.keep_checkpoints)

    def _bad_steps_message(self) -> str:
        return self.bad.message(self._newest_checkpoint())  # the cause and the fix: loop.BadSteps, as SFT and RMs

    def _newest_checkpoint(self) -> str:
        found = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
        return str(found) if found else "none (the run had not saved one yet)"

    def _checkpoint(self) -> str | None:
        """Save; on failure (disk full, ...) say what happened and, unless told to carry on,
        return the message that stops the run (on every process). The previous checkpoint is
        untouched."""
        return distributed.from_main(self._save_or_explain())

    def _save_or_explain(self) -> str | None:
        bad = ckpt.nonfinite_parameters(self.policy)
        if bad:  # a checkpoint of NaN weights is worse than none: it would be resumed from
            return (f"stopped: the weights hold NaN/inf after step {self.step} ({len(bad)} tensors, e.g. {bad[0]}); "
                    f"their checkpoint was not written. The learning rate may be too high (optim.lr); the newest "
                    f"intact checkpoint is {self._newest_checkpoint()}")
        try:
            self.save()
            return None
        except OSError as e:  # checkpoint.CheckpointError included: any failure to write it
            msg = (f"could not write the checkpoint of step {self.step} ({e}); the previous checkpoint is intact: "
                   f"{self._newest_checkpoint()}")
            if self.cfg.train.on_checkpoint_error == "continue":
                log.warning("%s; continuing without it (train.on_checkpoint_error=continue)", msg)
                return None
            return (f"stopped: {msg}. Free space (or set train.on_checkpoint_error=continue) and continue with "
                    f"--resume")

    def write_summary(self, interrupted: bool = False, error: str | None = None) -> dict:
        """summary.json and report.html, by rank 0; every process returns the summary. With
        several processes it records each one's final weights checksum (they must agree)."""
        checksums = distributed.gather_objects(distributed.weights_checksum(self.policy)) if self.world > 1 else None
        if not self.is_main:
            return distributed.from_main(None)
        rows = read_metrics(self.run_dir)
        evals = [r for r in rows if r.get("eval/accuracy") is not None]
        start = evals[0] if evals and evals[0]["step"] == 0 else None
        end = evals[-1] if evals else None
        summary = {
            "steps": self.step,
            "accuracy_start": start["eval/accuracy"] if start else None,
            "accuracy_end": end["eval/accuracy"] if end else None,
            "accuracy_end_step": end["step"] if end else None,
            "wall_seconds": round(self.wall_before + time.time() - self.t_start, 2),
            "interrupted": interrupted,
            "error": error,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "final_checkpoint": str(ckpt.latest_checkpoint(self.run_dir / "checkpoints") or ""),
        }
        for key in ("completion_len", "format_rate", "reflection_rate"):
            if start and end:
                summary[f"{key}_start"] = start.get(f"eval/{key}")
                summary[f"{key}_end"] = end.get(f"eval/{key}")
        if start and end:
            summary["accuracy_by_level"] = {
                k.split("/")[-1]: [start.get(k), end.get(k)] for k in end if k.startswith("eval/accuracy/level_")}
        if checksums:
            summary.update(world_size=self.world, weights_sha256_by_rank=checksums)
            if len(set(checksums)) > 1:
                log.error("the processes hold different weights at the end (sha256 by rank: %s): a bug", checksums)
        try:
            write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
            write_report(self.run_dir)
        except Exception as e:  # the run's results are in metrics.jsonl and the checkpoints; say, don't crash
            log.warning("could not write summary.json / report.html: %s", e)
        return distributed.from_main(summary)
