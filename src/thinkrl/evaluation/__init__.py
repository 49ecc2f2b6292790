"""Evaluation: benchmarks loaded into one row format (`benchmarks`) and the estimators that
turn sampled answers into scores with error bars (`estimators`: pass@k, pass@1, majority
vote and cons@k)."""
