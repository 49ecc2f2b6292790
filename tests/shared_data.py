"""The project's shared data (GSM8K, MATH-500, HumanEval, labelled answers): `../shared/data`
beside the checkout. CI always has it, so there a missing folder fails; elsewhere (a clone in
another place) the tests that read it are skipped and say why."""

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists() and not os.environ.get("CI"),
                                reason=f"{DATA} is not there (../shared/data beside the checkout)")
