"""The data of `thinkrl rm`: preference pairs {prompt, chosen, rejected} from JSONL (or any
source of thinkrl.data_sources: parquet, JSON, save_to_disk, hf:ID) or from the synthetic
general task (thinkrl.task.general), a held-out split, and the metrics that check a reward
model's scores against the rule that made the synthetic pairs. For a process reward model
(train.objective=step): step-labelled completions {prompt (or question), completion,
steps: [{end, label}]} from the same sources or from the embedded task (thinkrl.task.steps),
and the held-out step accuracy."""

from __future__ import annotations

from pathlib import Path
import torch

from ..config import ConfigError
from .reward_model_config import RMDataConfig


def auc(scores: list[float], labels: list[bool]) -> float:
    """Probability that a random positive outscores a random negative (ties half): the
    Mann-Whitney statistic. NaN when one class is missing."""
    pos = torch.tensor([s for s, y in zip(scores, labels) if y], dtype=torch.float64)
    neg = torch.tensor([s for s, y in zip(scores, labels) if not y], dtype=torch.float64)
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


PAIR_FIELDS = ("prompt", "chosen", "rejected")


def load_pairs(path: str | Path, on_bad_row: str = "error", split: str = "train") -> list[dict]:
    """Rows {prompt, chosen, rejected} (strings) from any source `thinkrl.data.read_records`
    reads (JSONL, JSON, parquet, a save_to_disk directory, hf:ID; `split` where the spec names
    none); a bad row raises DataError naming source and line or row (or is skipped and
    counted with on_bad_row="skip")."""
    from ..data import read_records

    def check(row):
        missing = [k for k in PAIR_FIELDS if not isinstance(row.get(k), str)]
        if missing:
            return (f"field {missing[0]!r} is missing or not a string (a preference pair is "
                    f"{{\"prompt\", \"chosen\", \"rejected\"}}; fields present: {sorted(row)})")
        return None

    rows, _ = read_records(path, check, on_bad_row, empty="no preference pairs", split=split)
    return [{k: row[k] for k in PAIR_FIELDS} for _, row in rows]


def _step_problem(row) -> str | None:
    """What is wrong with a step-labelled row, or None."""
    prompt = row.get("prompt", row.get("question"))
    if not isinstance(prompt, str) or not isinstance(row.get("completion"), str):
        return (f"a step-labelled row is {{\"prompt\" (or \"question\"), \"completion\", \"steps\": [{{\"end\", "
                f"\"label\"}}]}} with string prompt and completion; fields present: {sorted(row)}")
    steps, n = row.get("steps"), len(row["completion"])
    if not isinstance(steps, list):
        return "field 'steps' is missing or not a list of {end, label}"
    last = 0
    for j, st in enumerate(steps):
        end, label = (st.get("end"), st.get("label")) if isinstance(st, dict) else (None, None)
        if type(end) is not int or not (isinstance(label, bool) or label in (0, 1)):
            return f"steps[{j}] must be {{\"end\": int, \"label\": true/false}}, got {st!r}"
        if not last < end <= n:
            return (f"steps[{j}].end={end}: step ends are character offsets into the completion, strictly "
                    f"increasing, each in 1..{n}")
        last = end
    return None


def load_step_rows(path: str | Path, on_bad_row: str = "error", split: str = "train") -> list[dict]:
    """Rows {prompt, completion, steps: [{end, label}]} from any source `thinkrl.data.read_records`
    reads (the prompt may be named `question`); a bad row raises DataError naming source and
    line or row (or is skipped and counted with on_bad_row="skip")."""
    from ..data import read_records

    rows, _ = read_records(path, _step_problem, on_bad_row, empty="no step-labelled completions", split=split)
    return [{"prompt": row.get("prompt", row.get("question")), "completion": row["completion"],
             "steps": [{"end": st["end"], "label": bool(st["label"])} for st in row["steps"]]} for _, row in rows]


def step_metrics(scores: list[float], labels: list[bool]) -> dict:
    """Held-out step metrics of a process reward model's head values (p = sigmoid(score)):
    `accuracy` (p > 0.5 where the step is right, <= 0.5 where wrong; threshold 0.5), the same on
    right steps only (`accuracy_right`) and on wrong steps only (`accuracy_wrong`), since the
    classes are unbalanced; `auc` (a right step outscoring a wrong one), `steps`, `wrong_share`."""
    hits = [(s > 0) == y for s, y in zip(scores, labels)]
    right = [h for h, y in zip(hits, labels) if y]
    wrong = [h for h, y in zip(hits, labels) if not y]
    nan = float("nan")
    return {"accuracy": sum(hits) / len(hits) if hits else nan,
            "accuracy_right": sum(right) / len(right) if right else nan,
            "accuracy_wrong": sum(wrong) / len(wrong) if wrong else nan,
            "auc": auc(scores, labels), "steps": len(hits), "wrong_share": len(wrong) / len(hits) if hits else nan}


def load_data(d: RMDataConfig, seed: int, objective: str = "pairwise") -> tuple[list[dict], list[dict], str]:
    """(train rows, test rows, rule name or "none"): preference pairs, or for objective=step
    step-labelled completions {prompt, completion, steps}."""
    import random

    rule = d.rule
    load = load_step_rows if objective == "step" else load_pairs
    if d.train == "synthetic:steps":
        from ..task.steps import step_splits

        rows_train, rows_test = step_splits(d.synthetic_seed, d.synthetic_train, d.synthetic_test, d.synthetic_corrupt)
        train = [{"prompt": r["question"], **r} for r in rows_train]
        test = [{"prompt": r["question"], **r} for r in rows_test] if d.test == "synthetic" else []
        rule = "none"
    elif d.train.startswith("synthetic:"):
        from ..task.general import make_general_splits, preference_pairs

        kind = d.train.split(":", 1)[1]
        rows_train, rows_test = make_general_splits(d.synthetic_seed, d.synthetic_train, d.synthetic_test)
        train = preference_pairs(rows_train, d.synthetic_seed, kind)
        test = preference_pairs(rows_test, d.synthetic_seed + 1, kind) if d.test == "synthetic" else []
        if rule == "auto":
            rule = kind
    else:
        train = load(d.train, d.on_bad_row, "train")
        test = []
        if rule == "auto":
            rule = "none"
    if d.test == "split":
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        k = max(1, int(len(train) * d.test_share))
        if k >= len(train):
            from ..data import DataError

            raise DataError(f"data.test=split: {len(train)} row(s) are too few to hold out {d.test_share:.0%}")
        test, train = [train[i] for i in order[:k]], [train[i] for i in order[k:]]
    elif d.test not in ("synthetic", "none"):
        test = load(d.test, d.on_bad_row, "test")
    return train, test, rule


def rule_verdicts(pairs: list[dict], rule: str) -> list[tuple[bool, bool]]:
    """(rule accepts chosen, rule accepts rejected) for each pair; ConfigError when the
    pairs are not of thinkrl.task.general (their questions cannot be judged)."""
    from ..task.general import judge_harmless, judge_helpful

    def ok(prompt, text):
        return judge_helpful(prompt, text) if rule == "helpfulness" else judge_harmless(text)

    try:
        return [(ok(p["prompt"], p["chosen"]), ok(p["prompt"], p["rejected"])) for p in pairs]
    except ValueError as e:
        raise ConfigError(f"data.rule={rule}: {e}; set data.rule=none for data that is not "
                          f"thinkrl.task.general's") from None


def rule_metrics(verdicts: list[tuple[bool, bool]], r_chosen: list[float], r_rejected: list[float]) -> dict:
    """The scores against the known rule: `rule_agreement` (of the pairs the rule decides,
    the share where the reward model prefers the response the rule accepts), `rule_auc`
    (over every held-out response, across prompts: does a response the rule accepts outscore
    one it rejects?), `labels_follow_rule` (share of pairs whose label the rule confirms)."""
    decided = [(c, r, vc) for (vc, vr), c, r in zip(verdicts, r_chosen, r_rejected) if vc != vr]
    agree = [((c > r) == vc) if c != r else 0.5 for c, r, vc in decided]
    labels = [v[0] for v in verdicts] + [v[1] for v in verdicts]
    return {"rule_agreement": sum(agree) / len(agree) if agree else float("nan"),
            "rule_auc": auc(list(r_chosen) + list(r_rejected), labels),
            "labels_follow_rule": sum(vc and not vr for vc, vr in verdicts) / len(verdicts)}
