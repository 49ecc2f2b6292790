"""The embedded task (column addition in four levels) and its tiny base model, shipped as
package data in `assets/tiny` and rebuilt by `python -m thinkrl.task.build`."""

from pathlib import Path

from .arithmetic import LEVELS, TRACE_MIX, completion, has_carry, make_problem, make_splits, working

TINY_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"
# the embedded student: a smaller Llama with its own tokenizer, pre-trained on clean traces of the
# same problems (thinkrl build-tiny --arch llama --corpus-style plain ...; see its build_info.json),
# for distillation: a student need not repeat the teacher's flaws
STUDENT_DIR = Path(__file__).resolve().parent.parent / "assets" / "student"

__all__ = ["TINY_DIR", "STUDENT_DIR", "LEVELS", "TRACE_MIX", "completion", "has_carry", "make_problem", "make_splits", "working"]
