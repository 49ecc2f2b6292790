"""What a GRPO run keeps and leaves behind beyond what every loop does (`context.TrainingRun`:
checkpoints, resume, saving or saying why not, the stop, the summary's writing): the
reference model in its checkpoints, and its summary.json (with every process's final weights
checksum) and report.html."""

from __future__ import annotations

import logging

from .. import checkpoint as ckpt
from .. import distributed, sharding
from ..evaluation.report import write_report
from ..metrics import read_metrics
from .context import TrainingRun

log = logging.getLogger("thinkrl")


class GRPORun(TrainingRun):
    """GRPO's part of the run (a `GRPOTrainer`'s attributes: cfg, ref, policy)."""

    desc = "GRPO"

    def extra_state(self) -> dict:
        in_flight = {"in_flight": self.in_flight_state()} if self.cfg.rollout.async_steps else {}
        if not (self.ref is not None and self.cfg.objective.ref_reset_every):
            return {"ref_model": None, **in_flight}
        if sharding.is_sharded(self.ref):  # the whole reference, gathered to rank 0 (every process calls this)
            return {"ref_model": sharding.full_state_dict(self.ref), **in_flight}
        return {"ref_model": self.ref.state_dict(), **in_flight}

    def load_extra_state(self, state: dict) -> None:
        if state.get("in_flight") is not None:  # asynchronous rollouts: the generations already submitted
            self.load_in_flight_state(state["in_flight"])
        if self.ref is not None and state.get("ref_model") is not None:
            if sharding.is_sharded(self.ref):
                sharding.load_full_state(self.ref, state["ref_model"])
            else:
                self.ref.load_state_dict(state["ref_model"])

    def write_summary(self, interrupted: bool = False, error: str | None = None) -> dict:
        """summary.json and report.html, by rank 0; every process returns the summary. With
        several processes it records each one's final weights checksum (they must agree)."""
        checksums = distributed.gather_objects(sharding.weights_checksum(self.policy)) if self.world > 1 else None
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
            "wall_seconds": round(self.wall(), 2),
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
        self.save_summary(summary)
        try:
            write_report(self.run_dir)
        except Exception as e:  # the run's results are in metrics.jsonl and the checkpoints; say, don't crash
            log.warning("could not write report.html: %s", e)
        return distributed.from_main(summary)
