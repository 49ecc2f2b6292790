"""thinkrl: reasoning learned through reinforcement learning (GRPO, DeepSeek-R1)."""

__version__ = "0.1.0"
