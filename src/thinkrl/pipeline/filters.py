"""The readability filters of rejection sampling (DeepSeek-R1 §2.3.3; docs/R1-PIPELINE.md,
stage 3): "we have filtered out chain-of-thought with mixed languages, long paragraphs, and
code blocks", plus the dedup key and the per-prompt cap. Pure functions on text.

Each check returns "" when the text passes, else a short reason; `FILTERS` names them.

- `mixed_language`: the share of chain-of-thought words in the target language
  (`thinkrl.rewards.language`, the stage-2 reward) below a threshold. A chain of thought
  with no words at all (only numbers and symbols, as in the embedded task) passes: there is
  no language to mix.
- `overlong_paragraph`: a paragraph (text between blank lines) longer than N characters or
  N words. Code blocks are paragraphs too: a 300-line function is a wall of text either way.
- `broken_code`: unbalanced ``` fences, or a ```python / ```py block that `ast` cannot parse.
- `unclean_steps`: a stray token or a step written twice in a row in the chain of thought
  (the readability rule's checks of the reasoning, `thinkrl.rewards.readability`).
- `dedup_key`: the text with Unicode compatibility forms folded (NFKC), case folded and
  whitespace runs collapsed, so answers differing only in spacing count as one.
- `cap_per_prompt`: at most k items per prompt, first come first kept.
"""

from __future__ import annotations

import ast
import re
import unicodedata
from collections import Counter
from typing import Callable, Hashable, Iterable

from ..rewards.language import chain_of_thought, language_consistency_reward
from ..rewards.readability import reasoning_problem

_FENCE = re.compile(r"```")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
PYTHON_TAGS = ("python", "py", "python3")


def language_share(completion: str, lang: str = "en") -> float | None:
    """The share of the chain of thought's words in `lang` (None when it has no words)."""
    return language_consistency_reward([completion], lang=lang)[0]


def mixed_language(completion: str, lang: str = "en", min_share: float = 0.95) -> str:
    """"" unless the chain of thought's share of `lang` words is below `min_share`."""
    share = language_share(completion, lang)
    if share is None or share >= min_share:
        return ""
    return f"only {share:.0%} of the chain-of-thought words are in {lang} (need {min_share:.0%})"


def paragraphs(text: str) -> list[str]:
    """The non-blank paragraphs of `text` (split at blank lines), stripped."""
    return [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


def overlong_paragraph(text: str, max_chars: int = 0, max_words: int = 0) -> str:
    """"" unless a paragraph has more than `max_chars` characters or `max_words`
    whitespace-separated words (0 turns a limit off)."""
    for i, p in enumerate(paragraphs(text)):
        if max_chars and len(p) > max_chars:
            return f"paragraph {i + 1} has {len(p)} characters (limit {max_chars})"
        if max_words:
            n = len(p.split())
            if n > max_words:
                return f"paragraph {i + 1} has {n} words (limit {max_words})"
    return ""


def code_blocks(text: str) -> tuple[list[tuple[str, str]], bool]:
    """([(language tag, code)] for each fenced block, whether the fences balance).

    Every ``` counts as a fence, at the start of a line or not (`<think>```python` is a
    fence too, if a messy one); fences pair up in order. A block's tag is the first word
    after its opening fence, its code the lines after that one up to the closing fence."""
    fences = [m.start() for m in _FENCE.finditer(text)]
    blocks = []
    for start, close in zip(fences[::2], fences[1::2]):
        body = text[start + 3: close]
        info, newline, code = body.partition("\n")
        tag = info.split()[0].lower() if info.split() else ""
        blocks.append((tag, code if newline else ""))
    return blocks, len(fences) % 2 == 0


def broken_code(text: str) -> str:
    """"" unless the ``` fences do not balance or a python block does not parse."""
    blocks, balanced = code_blocks(text)
    if not balanced:
        return "unbalanced ``` fences"
    for i, (tag, code) in enumerate(blocks):
        if tag in PYTHON_TAGS:
            try:
                ast.parse(code)
            except (SyntaxError, ValueError) as e:  # ValueError: null bytes in the source
                return f"python block {i + 1} does not parse: {getattr(e, 'msg', e)}"
    return ""


def unclean_steps(completion: str) -> str:
    """"" unless the chain of thought holds a stray token or a step written twice in a row."""
    return reasoning_problem(chain_of_thought(completion))


def dedup_key(text: str) -> str:
    """Normalised text: NFKC, case folded, whitespace collapsed, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def dedup(items: Iterable, key: Callable) -> tuple[list, list]:
    """(first occurrence of each key, the later duplicates), order kept."""
    seen: set = set()
    kept, dropped = [], []
    for it in items:
        k = key(it)
        (dropped if k in seen else kept).append(it)
        seen.add(k)
    return kept, dropped


def cap_per_prompt(items: Iterable, prompt_of: Callable[..., Hashable], cap: int) -> tuple[list, list]:
    """(at most `cap` items per prompt, first come first kept; the rest). cap 0 = no cap."""
    count: Counter = Counter()
    kept, dropped = [], []
    for it in items:
        p = prompt_of(it)
        if cap and count[p] >= cap:
            dropped.append(it)
            continue
        count[p] += 1
        kept.append(it)
    return kept, dropped


FILTERS = {"mixed_language": mixed_language, "overlong_paragraph": overlong_paragraph, "broken_code": broken_code,
           "unclean_steps": unclean_steps}


def distinct_and_capped(items: Iterable, prompt_of: Callable, text_of: Callable, dedup_on: bool, cap: int,
                        dropped: Counter) -> list:
    """What cold start and rejection sampling keep after judging: one copy of each (prompt,
    normalised text) when `dedup_on`, then at most `cap` per prompt (0 = no cap), first come
    first kept. The counts dropped go to dropped["duplicate"] and dropped["over_cap"]."""
    items = list(items)
    if dedup_on:
        items, dups = dedup(items, lambda it: (prompt_of(it), dedup_key(text_of(it))))
        if dups:
            dropped["duplicate"] += len(dups)
    kept, over = cap_per_prompt(items, prompt_of, cap)
    if over:
        dropped["over_cap"] += len(over)
    return kept


__all__ = ["FILTERS", "broken_code", "cap_per_prompt", "chain_of_thought", "code_blocks", "dedup", "dedup_key",
           "distinct_and_capped", "language_share", "mixed_language", "overlong_paragraph", "paragraphs", "unclean_steps"]

