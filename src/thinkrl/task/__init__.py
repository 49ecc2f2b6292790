"""The embedded task (column addition in four levels) and its tiny base model, shipped as
package data in `assets/tiny` and rebuilt by `python -m thinkrl.task.build`."""

from pathlib import Path

from .arithmetic import LEVELS, TRACE_MIX, completion, has_carry, make_problem, make_splits, working

TINY_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"
# the embedded student: a smaller Llama with its own tokenizer, pre-trained on the same corpus
# (thinkrl build-tiny --arch llama ...; see its build_info.json), for distillation
STUDENT_DIR = Path(__file__).resolve().parent.parent / "assets" / "student"

__all__ = ["TINY_DIR", "STUDENT_DIR", "LEVELS", "TRACE_MIX", "completion", "has_carry", "make_problem", "make_splits", "working"]
