"""The embedded task (column addition in four levels) and its tiny base model, shipped as
package data in `assets/tiny` and rebuilt by `python -m thinkrl.task.build`."""

from pathlib import Path

TINY_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"
