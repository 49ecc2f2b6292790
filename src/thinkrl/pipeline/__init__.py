"""The DeepSeek-R1 pipeline (SYSTEM.md §3-4): cold start, reasoning RL, rejection sampling
and SFT, RL for all scenarios, and distillation, run as a cached graph of stages."""
