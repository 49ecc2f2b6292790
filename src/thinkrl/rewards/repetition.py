"""N-gram repetition penalty (after Yeo et al. 2025, "Demystifying Long Chain-of-Thought
Reasoning in LLMs", arXiv 2502.03373, §4). Length rewards invite padding, and small models
under RL loop on the same sentence (docs/ALGORITHM.md §What the papers tried and
dropped); a penalty for repeated n-grams closes that door.

    penalty = max_penalty × (1 − distinct n-grams / all n-grams)

over the completion's words, n = `ngram`. 0 (full marks) when no n-gram repeats, falling
towards `max_penalty` as the text becomes one phrase over and over. 0 when the completion
has fewer than n words (nothing can repeat).

Words: the completion split at whitespace, and each Han ideograph on its own (Chinese has
no spaces; as in `rewards.language`). Punctuation stays attached (`x=2,` is one word), case
matters. This is a sequence-level simplification: the paper's own penalty is dense (a
per-token penalty on each repeated n-gram, 40-grams at −0.05 in its runs), which a reward of
one number per completion cannot express. The defaults n = 3, max_penalty = −1 make the
penalty comparable to a 0/1 accuracy reward.
"""

from __future__ import annotations

import re
from collections import Counter

from .base import Scored, explained

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_WORD = re.compile(rf"[{_HAN}]|[^\s{_HAN}]+")


def repetition_words(text: str) -> list[str]:
    """The words n-grams are made of; see the module docstring."""
    return _WORD.findall(text)


@explained
def repetition_penalty_reward(completions: list[str], ngram: int = 3, max_penalty: float = -1.0,
                              **kwargs) -> list[Scored]:
    """max_penalty × (1 − distinct n-grams / all n-grams) of each completion, in
    [max_penalty, 0]; 0 when it has fewer than `ngram` words. See the module docstring."""
    if ngram < 1:
        raise ValueError(f"ngram must be at least 1, got {ngram}")
    if max_penalty > 0:
        raise ValueError(f"max_penalty must be ≤ 0 (a penalty), got {max_penalty}")
    out = []
    for c in completions:
        w = repetition_words(c)
        grams = Counter(tuple(w[i:i + ngram]) for i in range(len(w) - ngram + 1))
        total = sum(grams.values())
        if total == 0 or len(grams) == total:
            out.append(Scored(0.0))
            continue
        value = max_penalty * (1.0 - len(grams) / total)
        top, times = grams.most_common(1)[0]
        out.append(Scored(value, f"{total - len(grams)} of {total} {ngram}-grams repeat "
                                 f"(most: {' '.join(top)!r} ×{times})"))
    return out
