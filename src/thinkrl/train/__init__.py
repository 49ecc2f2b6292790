"""The training loops: GRPO (`grpo.py`, its run state in `grpo_state.py`), supervised
fine-tuning (`sft*.py`) and Bradley-Terry reward models (`reward_model*.py`), with what
they all share (`loop.py`)."""
