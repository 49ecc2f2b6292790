"""`thinkrl eval` end to end on the embedded model, and `thinkrl analyze` on a run."""

import json
from collections import Counter

import pytest

from thinkrl.cli import main
from thinkrl.evaluation.analyze import analyze_run, tables
from thinkrl.evaluation.run import EvalSettings, majority, run_eval

from .shared_data import DATA, needs_data


@pytest.fixture(scope="module")
def embedded_eval(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    s = EvalSettings(samples=4, limit=12, max_new_tokens=80)
    return out, run_eval("embedded", ["embedded"], out, s, show_progress=False)


def test_eval_writes_results_and_every_sample(embedded_eval):
    out, results = embedded_eval
    b = results["benchmarks"]["embedded"]
    assert json.loads((out / "results.json").read_text())["benchmarks"]["embedded"] == b
    samples = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 * 4 and b["n_questions"] == 12 and b["samples"] == 4
    by_q = {}
    for x in samples:
        by_q.setdefault(x["id"], []).append(x)
    # pass@1 is the mean correctness of the samples; pass@K is the share of questions solved at least once
    assert b["pass@1"]["mean"] == pytest.approx(sum(x["correct"] for x in samples) / len(samples))
    assert b["pass@k"]["4"]["mean"] == pytest.approx(sum(any(x["correct"] for x in q) for q in by_q.values()) / 12)
    ks = [b["pass@k"][k]["mean"] for k in ("1", "2", "4")]
    assert ks == sorted(ks)
    # cons@4 recomputed from the samples: the embedded answers are plain integers, so a vote
    # by exact string is the vote by equivalence; ties go to the answer seen first
    cons = []
    for q in by_q.values():
        answers = [x["answer"] for x in q]
        counts = Counter(a for a in answers if a is not None)
        if not counts:
            cons.append(False)
            continue
        best = min(counts, key=lambda a: (-counts[a], answers.index(a)))
        cons.append(q[answers.index(best)]["correct"])
    assert b["cons@4"]["mean"] == pytest.approx(sum(cons) / len(cons))
    assert set(b["by_level"]) == {"1", "2", "3", "4"}
    assert all(x["reason"] for x in samples if not x["correct"])
    assert b["mean_length"] == pytest.approx(sum(x["length"] for x in samples) / len(samples))


def test_eval_is_deterministic_under_a_seed(embedded_eval, tmp_path):
    out, results = embedded_eval
    again = run_eval("embedded", ["embedded"], tmp_path, EvalSettings(samples=4, limit=12, max_new_tokens=80),
                     show_progress=False)
    assert again["benchmarks"]["embedded"]["pass@1"] == results["benchmarks"]["embedded"]["pass@1"]
    assert (tmp_path / "samples.jsonl").read_text() == (out / "samples.jsonl").read_text()


def test_majority_picks_the_most_voted_class_and_breaks_ties_by_first_seen():
    assert majority([0, 1, 1, 0, 2, 1]) == 1
    assert majority([2, 0, 0, 2]) == 0  # tie between classes 2 and 0: class 2 was seen first (index 0)
    assert majority([None, 1, 0, 0, 1]) == 1  # tie: class 1 first seen at index 1
    assert majority([None, None]) is None


@needs_data
def test_eval_on_gsm8k_and_math500_slices_counts_what_does_not_fit(tmp_path, capsys):
    rc = main(["eval", "--model", "embedded", "--benchmark", "gsm8k,math500", "--samples", "2", "--limit", "6",
               "--max-new-tokens", "64", "--out", str(tmp_path), "--no-progress", "--data-dir", str(DATA)])
    assert rc == 0
    results = json.loads((tmp_path / "results.json").read_text())
    for name in ("gsm8k", "math500"):
        b = results["benchmarks"][name]
        assert b["n_questions"] + b["skipped_too_long"] == 6 and b["n_questions"] > 0
        assert 0.0 <= b["pass@1"]["mean"] <= 1.0
    printed = capsys.readouterr().out
    assert "gsm8k" in printed and "math500" in printed and "pass@1" in printed


def test_eval_refuses_bad_arguments(tmp_path, capsys):
    assert main(["eval", "--model", "embedded", "--benchmark", "embedded", "--samples", "0", "--out", str(tmp_path / "a")]) == 2
    assert main(["eval", "--model", "embedded", "--benchmark", "nosuch", "--out", str(tmp_path / "b")]) == 2
    assert "nosuch" in capsys.readouterr().err


def _metrics_row(step, acc, lens, wait, but):
    row = {"step": step, "eval/accuracy": acc, "eval/completion_len": sum(lens) / len(lens), "eval/reflection_rate": wait}
    for lv, n in enumerate(lens, 1):
        row[f"eval/completion_len/level_{lv}"] = n
        row[f"eval/accuracy/level_{lv}"] = acc / lv
    row.update({"eval/reflection/wait": wait, "eval/reflection/but": but, "eval/reflection/check": 0.0})
    return row


def test_analyze_tables_and_plots_from_metrics(tmp_path):
    rows = [_metrics_row(0, 0.3, [20, 30], 0.1, 0.2), {"step": 5, "reward": 1.0}, _metrics_row(10, 0.9, [22, 40], 0.5, 0.2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = tables(rows)
    assert t["eval_steps"] == [0, 10] and t["levels"] == ["1", "2"]
    assert t["by_step"]["10"]["length_by_level"] == {"1": 22, "2": 40}
    assert t["reflection_growth"]["wait"] == {"first": 0.1, "last": 0.5, "ratio": pytest.approx(5.0)}
    assert t["reflection_growth"]["but"]["ratio"] == pytest.approx(1.0) and "check" not in t["reflection_growth"]
    result = analyze_run(tmp_path)
    assert sorted(result["plots"]) == ["accuracy_by_level.png", "length_over_training.png",
                                       "length_vs_difficulty.png", "reflective_words.png"]
    for name in result["plots"]:
        assert (tmp_path / "analysis" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "analysis" / "analysis.json").read_text())["eval_steps"] == [0, 10]


def test_analyze_a_zero_run(tmp_path, capsys):
    run = tmp_path / "run"
    # 64 questions: enough for the base (about 7% reflective at T 0.6) to write a reflective word
    assert main(["zero", "--steps", "2", "--out", str(run), "--no-progress", "eval.every=1", "data.eval_size=64",
                 "train.save_every=0"]) == 0
    assert main(["analyze", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "len L4" in printed and "wait" in printed
    assert (run / "analysis" / "length_vs_difficulty.png").exists()
    assert (run / "analysis" / "reflective_words.png").exists()
    assert "Response length against difficulty" in (run / "report.html").read_text()
    assert main(["analyze", str(tmp_path / "nothing")]) == 2


def test_training_time_evaluation_and_thinkrl_eval_are_one_protocol():
    """One set of protocol defaults, and the same settings and seed give the same samples
    whether GRPO's held-out evaluation or `thinkrl eval` draws them."""
    import torch

    from thinkrl.config import Config, load_config
    from thinkrl.distill.config import DistillConfig
    from thinkrl.evaluation.benchmarks import load_benchmark
    from thinkrl.evaluation.heldout import evaluate
    from thinkrl.evaluation.run import evaluate_rows
    from thinkrl.policy import load_model, load_tokenizer
    from thinkrl.rollout import make_engine
    from thinkrl.sections import EvalProtocol
    from thinkrl.template import render

    for cfg in (Config().eval, DistillConfig().eval, EvalSettings()):
        assert isinstance(cfg, EvalProtocol)
        assert (cfg.temperature, cfg.top_p) == (EvalProtocol.temperature, EvalProtocol.top_p) == (0.6, 0.95)
    assert load_config(None, ["eval.temperature=0.7", "eval.samples=3"]).eval.samples == 3  # the YAML keys
    tok = load_tokenizer("embedded")
    engine = make_engine("hf", load_model("embedded", torch.device("cpu"), requires_grad=False), tok, "cpu")
    rows = load_benchmark("embedded", None, limit=6)
    cfg = load_config(None, ["eval.samples=3", "eval.batch_size=9", "eval.max_new_tokens=32", "eval.temperature=0.9"])
    prompts = [tok(render(r["question"], cfg.model.template, tok), add_special_tokens=False)["input_ids"] for r in rows]
    held = evaluate(engine, prompts, rows, cfg, seed=7)
    s = EvalSettings(samples=3, batch_size=9, max_new_tokens=32, temperature=0.9, seed=7, template=cfg.model.template,
                     stop=cfg.rollout.stop)
    summary, _ = evaluate_rows(engine, tok, rows, s)
    # the same completions; only the order of the sums differs
    assert held["eval/accuracy"] == pytest.approx(summary["pass@1"]["mean"], rel=1e-12)
    assert held["eval/completion_len"] == pytest.approx(summary["mean_length"], rel=1e-12)


class ScriptedEngine:
    """A rollout engine that answers from a script (question -> K completions): the engine
    interface, so evaluate_rows' scoring and estimators are checked on known answers."""

    def __init__(self, script, tokenizer):
        self.script, self.tokenizer = script, tokenizer

    def generate(self, prompt_ids, params, generator=None):
        from thinkrl.rollout import Rollouts

        texts = []
        for ids in prompt_ids:
            prompt = self.tokenizer.decode(ids)
            [key] = [k for k in self.script if k in prompt]
            assert len(self.script[key]) == params.n
            texts += self.script[key]
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return Rollouts(prompt_ids=[p for p in prompt_ids for _ in range(params.n)], completion_ids=ids,
                        group_ids=[g for g in range(len(prompt_ids)) for _ in range(params.n)],
                        logprobs=[[0.0] * len(i) for i in ids], texts=texts, finish_reasons=["stop"] * len(texts))

    def sync_weights(self, model):
        pass


@needs_data
def test_math_votes_by_equivalence_and_code_is_executed(qwen2_dir):
    from thinkrl.evaluation.benchmarks import load_benchmark
    from thinkrl.evaluation.run import evaluate_rows
    from thinkrl.policy import load_tokenizer

    tok = load_tokenizer(str(qwen2_dir))
    a = lambda x: f" <think>x</think> <answer>{x}</answer>"  # noqa: E731
    math_rows = [{"id": "q1", "question": "QONE", "answer": "0.5", "kind": "math"},
                 {"id": "q2", "question": "QTWO", "answer": "2", "kind": "math"}]
    script = {"QONE": [a("2"), a("1/2"), a("2"), a("\\frac{1}{2}"), a("0.5")],  # 3 equivalent votes beat 2
              "QTWO": [a("3"), a("2"), a("2"), a("3"), a("7")]}  # a tie: 3 was seen first
    s = EvalSettings(samples=5, max_new_tokens=16)
    summary, samples = evaluate_rows(ScriptedEngine(script, tok), tok, math_rows, s)
    assert summary["pass@1"]["mean"] == pytest.approx((3 / 5 + 2 / 5) / 2)
    assert summary["cons@5"]["mean"] == pytest.approx(0.5)  # q1 right by the vote, q2 wrong by the tie rule
    assert summary["pass@k"]["5"]["mean"] == 1.0

    he = load_benchmark("humaneval", DATA, limit=3)
    good = lambda r: f"```python\n{r['prompt']}{r['answer'][len(r['prompt']):]}```"  # noqa: E731
    bad = lambda r: f"```python\n{r['prompt']}    return None\n```"  # noqa: E731
    script = {r["prompt"][-60:]: [good(r), bad(r)] for r in he}
    summary, samples = evaluate_rows(ScriptedEngine(script, tok), tok, he, EvalSettings(samples=2, max_new_tokens=16))
    assert [x["correct"] for x in samples] == [True, False] * 3
    assert summary["pass@1"]["mean"] == 0.5 and summary["pass@k"]["2"]["mean"] == 1.0
    assert "cons@2" not in summary  # majority voting is for answers, not programs
    assert all(x["reason"] for x in samples if not x["correct"])


@needs_data
def test_eval_on_a_humaneval_slice(tmp_path):
    rc = main(["eval", "--model", "embedded", "--benchmark", "humaneval", "--samples", "2", "--limit", "6",
               "--max-new-tokens", "32", "--out", str(tmp_path), "--no-progress", "--data-dir", str(DATA)])
    assert rc == 0
    b = json.loads((tmp_path / "results.json").read_text())["benchmarks"]["humaneval"]
    assert b["n_questions"] + b["skipped_too_long"] == 6 and b["n_questions"] > 0
    samples = [json.loads(l) for l in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * b["n_questions"] and all(x["reason"] for x in samples if not x["correct"])
