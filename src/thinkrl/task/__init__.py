"""The embedded task (column addition in four levels) and its tiny base model, shipped as
package data in `assets/tiny` and rebuilt by `python -m thinkrl.task.build`."""

from pathlib import Path

from .arithmetic import LEVELS, TRACE_MIX, completion, has_carry, make_problem, make_splits, working

TINY_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"

__all__ = ["TINY_DIR", "LEVELS", "TRACE_MIX", "completion", "has_carry", "make_problem", "make_splits", "working"]
