"""Distillation into a smaller student: teacher samples filtered and re-tokenised, then SFT
(`run.py`, `data.py`), or on-policy by per-token reverse KL (`onpolicy.py`); the settings
(`config.py`) and the student's held-out evaluation (`evaluate.py`)."""
