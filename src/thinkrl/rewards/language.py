"""Language consistency of the chain of thought (DeepSeek-R1, arXiv 2501.12948, §2.3.2; stage 2
in docs/R1-PIPELINE.md): "the proportion of target language words in the CoT". R1-Zero
mixed languages in its reasoning; this reward trades a little benchmark score for
readability.

    reward = (words of the chain of thought in the target language) / (all its words)

The chain of thought (`chain_of_thought`) is the text inside <think>…</think> (all such
blocks, joined); when a <think> is never closed, everything after it; when there is a
</think> but no <think> (templates that put the opening tag in the prompt), everything
before it; the whole completion when it has no think tags at all.

What counts as a word (`words`), made for mixed English/Chinese reasoning about math:

- a run of Latin letters is one word (`Let`, `café`; an apostrophe between letters does not
  split it: `don't` is one word);
- every Han ideograph is one word (Chinese is written without spaces; one character is the
  unit a reader sees, and it keeps the count independent of any word segmenter);
- a run of letters of any other script (Cyrillic, Arabic, Hangul, kana, Greek, ...) is one
  word, never in the target language;
- neutral, counted neither way: digits, punctuation (ASCII and full-width `，。`),
  whitespace, math symbols, LaTeX commands (`\\frac`, `\\sqrt`: a backslash and letters),
  and a lone Greek letter (`π`, `θ`, `Δ`: a math symbol, not Greek prose).

Targets: `lang="en"` counts Latin-script words as in the target (so any Latin-script
language counts as English: a letter count cannot tell them apart); `lang="zh"` counts Han
ideographs (so Japanese kanji count as Chinese). Single-letter variables (`x`, `n`) are
Latin words, so a Chinese chain of thought full of algebra scores a little below 1.

A chain of thought with no words at all (empty, or only numbers and symbols) scores None,
"not applicable": there is no language to be consistent in.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from .base import Scored, explained

LANGUAGES = {"en": "latin", "zh": "han"}  # target language -> the script its words are in

_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")


def chain_of_thought(completion: str) -> str:
    """The reasoning of a completion; see the module docstring."""
    opened, closed = "<think>" in completion, "</think>" in completion
    if opened and closed:
        blocks = re.findall(r"<think>(.*?)(?:</think>|$)", completion, re.DOTALL)
        return "\n".join(blocks)
    if opened:
        return completion.split("<think>", 1)[1]
    if closed:
        return completion.rsplit("</think>", 1)[0]
    return completion


@lru_cache(maxsize=65536)
def _script(ch: str) -> str:
    """"latin", "han", another script's name ("CYRILLIC", "GREEK", ...), "mark" for a
    combining mark, or "" for a character that is not a letter (neutral)."""
    if ch.isascii():
        return "latin" if ch.isalpha() else ""
    cat = unicodedata.category(ch)
    if cat.startswith("M"):
        return "mark"
    if not cat.startswith("L"):
        return ""
    name = unicodedata.name(ch, "")
    if name.startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")):
        return "han"
    head = name.split(" ", 2)[:2]  # "LATIN SMALL ...", "FULLWIDTH LATIN ..."
    if "LATIN" in head:
        return "latin"
    return head[0] if head and head[0] else "other"


def words(text: str) -> list[tuple[str, str]]:
    """The countable words of `text`, each as (word, script); see the module docstring."""
    text = _LATEX_COMMAND.sub(" ", text)
    out: list[tuple[str, str]] = []
    run, run_script = "", ""

    def flush():
        nonlocal run, run_script
        if run and not (run_script == "GREEK" and sum(_script(c) == "GREEK" for c in run) == 1):
            out.append((run, run_script))
        run, run_script = "", ""

    for i, ch in enumerate(text):
        s = _script(ch)
        if s == "mark" and run:
            run += ch  # an accent combining with the letter before it
            continue
        if ch in "'’" and run_script == "latin" and i + 1 < len(text) and _script(text[i + 1]) == "latin":
            run += ch  # don't, it's
            continue
        if s in ("", "mark"):
            flush()
        elif s == "han":
            flush()
            out.append((ch, "han"))
        elif s == run_script:
            run += ch
        else:
            flush()
            run, run_script = ch, s
    flush()
    return out


def _targets(lang, n: int) -> list[str]:
    langs = list(lang) if isinstance(lang, (list, tuple)) else [lang] * n
    if len(langs) != n:
        raise ValueError(f"{n} completions but {len(langs)} target languages")
    for lg in set(langs):
        if lg not in LANGUAGES:
            raise ValueError(f"unsupported target language {lg!r}; supported: {', '.join(LANGUAGES)}")
    return langs


@explained
def language_consistency_reward(completions: list[str], lang="en", **kwargs) -> list[Scored]:
    """The share of the chain of thought's words that are in the target language `lang`
    ("en" or "zh"; one for all, or a dataset column giving one per row), in [0, 1]. None when
    the chain of thought has no words. DeepSeek-R1 §2.3.2; definitions in the module
    docstring."""
    out = []
    for completion, lg in zip(completions, _targets(lang, len(completions))):
        found = words(chain_of_thought(completion))
        if not found:
            out.append(Scored(None, "no words in the chain of thought"))
            continue
        target = LANGUAGES[lg]
        off = [w for w, s in found if s != target]
        value = (len(found) - len(off)) / len(found)
        reason = ""
        if off:
            examples = ", ".join(list(dict.fromkeys(repr(w) for w in off))[:5])
            reason = f"{len(off)} of {len(found)} words not in {lg} (e.g. {examples})"
        out.append(Scored(value, reason))
    return out
