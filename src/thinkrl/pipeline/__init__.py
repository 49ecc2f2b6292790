"""The DeepSeek-R1 pipeline (docs/R1-PIPELINE.md): cold start, reasoning RL, rejection sampling
and SFT, RL for all scenarios, and distillation, run as a cached graph of stages."""
