"""A generative judge: a language model asked whether a prediction matches the reference
(DeepSeek-R1 §2.3.3: in rejection sampling, data that a rule cannot check is judged "by
feeding the ground-truth and model predictions into DeepSeek-V3 for judgment").

The judge is told to end with one line, exactly `VERDICT: CORRECT` or `VERDICT: INCORRECT`.
`parse_verdict` reads that line and nothing else; anything it cannot read unambiguously is
malformed (`Verdict(None, why)`), and a malformed verdict is never an acceptance: the sample
is rejected and counted. Malformed means:

- empty output;
- the output echoes the judge prompt (its header or field labels): a verdict found there
  would be the prompt's, or the prediction's, not the judge's;
- no `VERDICT:` at all, or a `VERDICT:` with another value (`VERDICT: PARTIALLY CORRECT`);
- both verdicts, in one line or in several;
- a verdict only inside a sentence, never on a line of its own.

Several lines that agree are one verdict. The fields' own text cannot forge a verdict: any
`verdict:` in the question, reference or prediction is defused before it enters the prompt.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple

import torch

UNJUDGED = "not judged"  # the reason's start when the judge prompt does not fit its context
HEADER = "You are grading an answer against a reference answer."
LABELS = ("[Question]", "[Reference answer]", "[Predicted answer]")
PROMPT = (
    HEADER + " Decide whether the predicted final answer is equivalent to the reference answer "
    "(same value or meaning; ignore formatting and wording). Do not solve the question again.\n\n"
    "[Question]\n{question}\n\n[Reference answer]\n{reference}\n\n[Predicted answer]\n{prediction}\n\n"
    "Explain briefly, then finish with one last line that is exactly \"VERDICT: CORRECT\" or exactly "
    "\"VERDICT: INCORRECT\".\n"
)

_MENTION = re.compile(r"verdict\s*:\s*(?P<value>[^\n]*)", re.IGNORECASE)
_LINE = re.compile(r"[\s*_#>`\"']*verdict\s*:\s*(?P<value>[a-z ]+?)[\s*_.`\"'!]*", re.IGNORECASE)
_VALUE = re.compile(r"\s*(?P<v>incorrect|correct)\b", re.IGNORECASE)


class Verdict(NamedTuple):
    correct: bool | None  # None: malformed, which is never accepted
    reason: str = ""


def _defuse(text: str) -> str:
    """A field's own `verdict:` cannot pass for the judge's."""
    return re.sub(r"(?i)verdict(\s*):", r"verdict\1-", str(text))


def build_judge_prompt(question: str, reference: str, prediction: str) -> str:
    """The judge's instruction with the three fields; see the module docstring."""
    return PROMPT.format(question=_defuse(question).strip(), reference=_defuse(reference).strip(),
                         prediction=_defuse(prediction).strip())


def parse_verdict(text: str | None) -> Verdict:
    """Verdict(True | False, the verdict line) or Verdict(None, why it is malformed)."""
    if text is None or not str(text).strip():
        return Verdict(None, "empty output")
    text = str(text)
    if HEADER in text or any(label in text for label in LABELS):
        return Verdict(None, "the output echoes the judge prompt")
    mentions = [m.group("value").strip() for m in _MENTION.finditer(text)]
    if not mentions:
        return Verdict(None, "no VERDICT line")
    values = set()
    for m in mentions:
        found = {v.lower() for v in re.findall(r"\b(incorrect|correct)\b", m, re.IGNORECASE)}
        if not found or _VALUE.match(m) is None:
            return Verdict(None, f"unreadable verdict {m[:40]!r}")
        values |= found
    if len(values) > 1:
        return Verdict(None, "both CORRECT and INCORRECT")
    lines = [ln for ln in text.splitlines() if _LINE.fullmatch(ln)]
    if not lines:
        return Verdict(None, "the verdict is not on a line of its own")
    value = _LINE.fullmatch(lines[-1]).group("value").strip().lower()
    if value not in ("correct", "incorrect"):
        return Verdict(None, f"unreadable verdict {value[:40]!r}")
    return Verdict(value == "correct", lines[-1].strip())


class GenerativeJudge:
    """A causal LM as judge, sampled through the rollout engine (`rollout.sample.sample_with`).

    model: a model directory / hub id / "embedded", or a loaded model (then pass `tokenizer`).
    template: how the judge prompt becomes the model's input (`thinkrl.template.render`:
    "none", "chat", "r1_zero" or a string with {prompt}). A prompt that does not fit the
    model's context with `max_new_tokens` is not asked: Verdict(None, ...), counted as
    `unjudged`. `counts` accumulates correct / incorrect / malformed / unjudged over calls.
    Deterministic in `seed`."""

    def __init__(self, model, tokenizer=None, template: str = "none", temperature: float = 0.6,
                 top_p: float = 0.95, max_new_tokens: int = 64, batch_size: int = 64, seed: int = 0,
                 device: str = "auto"):
        from ..policy import load_model, load_tokenizer, resolve_device

        if temperature <= 0 or not 0 < top_p <= 1 or max_new_tokens < 1 or batch_size < 1:
            raise ValueError("judge sampling needs temperature > 0, top_p in (0, 1], max_new_tokens >= 1, "
                             f"batch_size >= 1; got {temperature}, {top_p}, {max_new_tokens}, {batch_size}")
        if isinstance(model, str):
            self.name = model
            self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model)
            self.model = load_model(model, resolve_device(device), requires_grad=False)
        else:
            if tokenizer is None:
                raise ValueError("a loaded judge model needs its tokenizer (tokenizer=...)")
            self.name, self.model, self.tokenizer = type(model).__name__, model, tokenizer
        self.template, self.temperature, self.top_p = template, temperature, top_p
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.counts: Counter = Counter()

    def judge(self, questions: list[str], references: list[str], predictions: list[str]) -> list[Verdict]:
        from ..rollout import make_engine
        from ..rollout.sample import SampleSettings, sample_with
        from ..template import render

        if not len(questions) == len(references) == len(predictions):
            raise ValueError(f"{len(questions)} questions, {len(references)} references and "
                             f"{len(predictions)} predictions: they must be aligned")
        context = getattr(self.model.config, "max_position_embeddings", None)
        rows = [{"id": i, "question": render(build_judge_prompt(q, r, p), self.template, self.tokenizer)}
                for i, (q, r, p) in enumerate(zip(questions, references, predictions))]
        ids = [self.tokenizer(row["question"], add_special_tokens=False)["input_ids"] for row in rows]
        engine = make_engine("hf", self.model, self.tokenizer, next(self.model.parameters()).device)
        s = SampleSettings(n=1, temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                           stop=[], batch_size=self.batch_size)
        # one generator for the judge's life: each call goes on from where the last one stopped
        got = {g["prompt_id"]: g["completion"] for g in sample_with(engine, self.tokenizer, rows, s, context,
                                                                   prompt_ids=ids, generator=self.generator)}
        out: list[Verdict] = []
        for i in range(len(rows)):
            if i not in got:  # sample_with skipped it: it does not fit the context
                out.append(Verdict(None, f"{UNJUDGED}: the judge prompt of {len(ids[i])} tokens does not fit the "
                                         f"context of {context} with {self.max_new_tokens} new tokens"))
                self.counts["unjudged"] += 1
                continue
            v = parse_verdict(got[i])
            out.append(v)
            self.counts["malformed" if v.correct is None else ("correct" if v.correct else "incorrect")] += 1
        return out
