"""The pipeline's end report: the paper's table, reproduced small. One row per model (after
every stage, plus the distilled and the RL-only student), evaluated the same way:

- reasoning, `thinkrl eval` on the embedded task's held-out questions: pass@1 and cons@K over
  K samples at temperature 0.6 / top-p 0.95 (docs/EVALUATION.md), the share of completions in the
  R1 form (think block, then answer block, a summary allowed between: `format_lenient`), the
  share that the readability rule accepts (`rewards.readability`: reasoning, summary, answer,
  no stray token or repeated step), the language consistency of the chain of thought
  (`language`, over the completions whose reasoning has words), the share whose reasoning has
  a word of another language (`mixed`), the mean length in tokens;
- general, the synthetic non-reasoning task: the share of sampled answers that are helpful
  and harmless, judged by the rules that generated the reward models' preference pairs.

Every share comes with its standard error over questions (`KEY_se`: the per-question means'
sample standard deviation / sqrt(questions), as for pass@1), printed as `value ± se`.
"""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = [("pass@1", "pass@1", "{:.1%}"), ("cons", "cons@K", "{:.1%}"), ("format", "format", "{:.1%}"),
           ("readable", "readable", "{:.1%}"), ("language", "language", "{:.2f}"), ("mixed", "mixed", "{:.1%}"),
           ("length", "length", "{:.1f}"),
           ("helpful", "helpful", "{:.1%}"), ("harmless", "harmless", "{:.1%}")]


def mean_se_by_question(values, questions) -> tuple[float | None, float | None]:
    """(mean, SE) of per-question means: values None are left out, a question with none is too."""
    from ..evaluation.estimators import mean_and_se

    per: dict = {}
    for v, q in zip(values, questions):
        if v is not None:
            per.setdefault(q, []).append(float(v))
    if not per:
        return None, None
    return mean_and_se([sum(v) / len(v) for v in per.values()])


def evaluate_model(s: dict, out: Path) -> dict:
    from ..evaluation.run import EvalSettings, run_eval
    from ..rewards import get_reward

    samples = int(s.get("samples", 8))
    settings = EvalSettings(samples=samples, temperature=float(s.get("temperature", 0.6)),
                            top_p=float(s.get("top_p", 0.95)), max_new_tokens=int(s.get("max_new_tokens", 120)),
                            template=s.get("template", "r1_zero"), seed=int(s.get("seed", 0)),
                            limit=s.get("limit"), batch_size=int(s.get("batch_size", 256)))
    res = run_eval(s["model"], [s.get("benchmark", "embedded")], out / "reasoning", settings, show_progress=False)
    bench = next(iter(res["benchmarks"].values()))
    rows = [json.loads(line) for line in (out / "reasoning" / "samples.jsonl").open()]
    texts, ids = [r["completion"] for r in rows], [r["id"] for r in rows]
    m = {"model": s["model"], "pass@1": bench["pass@1"]["mean"], "pass@1_se": bench["pass@1"]["se"],
         "cons@K": bench.get(f"cons@{samples}", {}).get("mean"), "cons@K_se": bench.get(f"cons@{samples}", {}).get("se"),
         "K": samples, "format_strict": bench["format_rate"], "length": bench["mean_length"],
         "reflection": bench["reflection_rate"], "n_questions": bench["n_questions"]}
    language = get_reward("language")(texts)
    per_sample = {"format": get_reward("format_lenient")(texts), "readable": get_reward("readability")(texts),
                  "language": language, "mixed": [None if v is None else float(v < 1.0) for v in language]}
    for key, values in per_sample.items():
        m[key], m[f"{key}_se"] = mean_se_by_question(values, ids)
    if s.get("general"):
        m.update(_general(s, out))
    return m


def _general(s: dict, out: Path) -> dict:
    from ..task.general import judge_harmless, judge_helpful
    from ..rollout.sample import SampleSettings, sample_answers  # deferred: it imports torch

    rows = [json.loads(line) for line in Path(s["general"]).open() if line.strip()][: int(s.get("general_limit", 150))]
    got = sample_answers(s["model"], rows, SampleSettings(n=int(s.get("general_samples", 4)), temperature=0.6,
                                                          top_p=0.95, max_new_tokens=int(s.get("max_new_tokens", 120)),
                                                          template=s.get("template", "r1_zero"), stop=[],
                                                          seed=int(s.get("seed", 0))))
    helpful = [float(judge_helpful(x["question"], x["completion"])) for x in got]
    harmless = [float(judge_harmless(x["completion"])) for x in got]
    with (out / "general_samples.jsonl").open("w") as f:
        for x, h, k in zip(got, helpful, harmless):
            f.write(json.dumps({"question": x["question"], "completion": x["completion"], "helpful": h,
                                "harmless": k}, ensure_ascii=False) + "\n")
    questions = [x["question"] for x in got]
    (h, h_se), (k, k_se) = mean_se_by_question(helpful, questions), mean_se_by_question(harmless, questions)
    return {"helpful": h, "helpful_se": h_se, "harmless": k, "harmless_se": k_se}


def format_table(rows: list[tuple[str, dict]], k: int | None = None) -> str:
    head = ["model"] + [(f"cons@{k}" if key == "cons@K" and k else label) for label, key, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in rows:
        cells = [name]
        for _, key, fmt in COLUMNS:
            v, se = m.get(key), m.get(f"{key}_se")
            cell = fmt.format(v) if isinstance(v, (int, float)) else "–"
            cells.append(f"{cell} ± {fmt.format(se)}" if isinstance(v, (int, float)) and isinstance(se, (int, float))
                         else cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(s: dict, out: Path) -> dict:
    """settings: rows {label: path of an eval stage's metrics.json}, optional notes {label: text}
    and compute {label: path of a stage directory whose stage.json summary is quoted}."""
    rows = [(label, json.loads(Path(path).read_text())) for label, path in s["rows"].items()]
    k = next((m.get("K") for _, m in rows if m.get("K")), None)
    table = format_table(rows, k)
    compute = {}
    for label, d in (s.get("compute") or {}).items():
        rec = json.loads((Path(d) / "stage.json").read_text()) if (Path(d) / "stage.json").exists() else {}
        compute[label] = {"seconds": rec.get("seconds"), **{k2: v for k2, v in rec.get("summary", {}).items()
                                                            if k2 in ("samples", "steps", "n_samples", "kept")}}
    text = "# R1 pipeline on the embedded task\n\n" + table + "\n"
    if compute:
        text += "\nCompute of the student comparison:\n\n" + "\n".join(
            f"- {label}: " + ", ".join(f"{a} {b}" for a, b in c.items() if b is not None) for label, c in compute.items()) + "\n"
    if s.get("note"):
        text += "\n" + s["note"].strip() + "\n"
    (out / "table.md").write_text(text)
    (out / "table.json").write_text(json.dumps({"rows": dict(rows), "compute": compute}, indent=1))
    print("\n" + text)
    return {"outputs": {"table": str(out / "table.md"), "json": str(out / "table.json")}}


def table_cells(text: str) -> dict[tuple[str, str], str]:
    """The cells of a written table.md, {(row, column): text}, and its compute lines as
    ("compute: LABEL", item); timings (`seconds`) are left out, as they differ run to run."""
    cells: dict[tuple[str, str], str] = {}
    head, compute = None, False
    for line in text.splitlines():
        compute = compute or line.startswith("Compute of")
        if line.startswith("|") and not line.startswith("|---"):
            parts = [p.strip() for p in line.strip().strip("|").split("|")]
            if head is None:
                head = parts
            else:
                cells.update({(parts[0], col): cell for col, cell in zip(head[1:], parts[1:])})
        elif compute and line.startswith("- ") and ": " in line:  # "- LABEL: seconds 4.3, samples 32, kept 12"
            label, items = line[2:].split(": ", 1)
            for item in items.split(", "):
                name, _, value = item.partition(" ")
                if name != "seconds":
                    cells[(f"compute: {label}", name)] = value
    return cells


def table_differences(a: str, b: str) -> list[dict]:
    """The cells where two table.md texts differ: [{row, column, a, b}] (None where one lacks it)."""
    ca, cb = table_cells(a), table_cells(b)
    return [{"row": r, "column": c, "a": ca.get((r, c)), "b": cb.get((r, c))}
            for r, c in sorted(set(ca) | set(cb)) if ca.get((r, c)) != cb.get((r, c))]
