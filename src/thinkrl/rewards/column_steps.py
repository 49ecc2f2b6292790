"""`column_steps`: the embedded task's rule step reward (column addition, `thinkrl.task.arithmetic`).

Each column equation written in the <think> block (the whole text if there is no <think> tag)
is one step, split by `EQUATION_PATTERN`: `7+5=12 4+8+1=13 3+0+1=4` for 347+85. A step scores
1.0 when it is the right column's two digits (in either order), with `+1` written exactly when
the column before it carried (in the right addition), and the right sum; else 0.0 with a
reason ("column 2: 4+8=12 forgets the carry"). Columns count from 1 at the units.

Columns are expected in order, units first. An equation is taken as
- a fix of the column just got wrong, when it has that column's digits and is right as a fix
  (`4+8=12 wait carry 4+8+1=13`: the first step 0, the fix 1);
- else the next column, when it has the next column's digits (whether right or not);
- else a failed fix, when it has the digits of the column just got wrong;
- else out of order (another column's digits: 0, and the next column is still expected), an
  extra step (all columns done: 0), or a misread attempt at the next column (digits of no
  column: 0, and that column counts as attempted).

The problem's numbers come from the row's `a` and `b` columns when it has them, else from the
last `A+B?` in the prompt or the `question` column ("What is 347+85?"). A completion with no
equation has no steps. With `steps=` spans given (a run's `rewards.step_split`), each span
scores 1.0 if all its equations are right, 0.0 if one is wrong, and None (unscored) if it
holds none; the columns are followed across the spans in order.
"""

from __future__ import annotations

import re

from ..task.arithmetic import _columns
from .steps import EQUATION_PATTERN, Step, step_reward

_EQUATION = re.compile(EQUATION_PATTERN)
_PROBLEM = re.compile(r"(\d+)\s*\+\s*(\d+)\s*\?")


def _problem(i: int, prompts, columns: dict) -> tuple[int, int] | None:
    a, b = (columns.get(k) or [None] * (i + 1) for k in ("a", "b"))
    if a[i] is not None and b[i] is not None and str(a[i]).isdigit() and str(b[i]).isdigit():
        return int(a[i]), int(b[i])
    for text in ((prompts or [None] * (i + 1))[i], (columns.get("question") or [None] * (i + 1))[i]):
        found = _PROBLEM.findall(text) if isinstance(text, str) else []
        if found:
            return int(found[-1][0]), int(found[-1][1])
    return None


def _think(text: str) -> tuple[int, int]:
    """The (start, end) of the <think> block's inside (to the end of the text if it is not
    closed); the whole text if there is no <think> tag."""
    opened = text.find("<think>")
    if opened < 0:
        return 0, len(text)
    start = opened + len("<think>")
    closed = text.find("</think>", start)
    return start, len(text) if closed < 0 else closed


class _Columns:
    """Follows one completion's equations through the columns of a+b."""

    def __init__(self, a: int, b: int):
        self.digits = _columns(a, b)  # (digit of a, digit of b) per column, units first
        self.carry_in, carry = [], 0
        for x, y in self.digits:
            self.carry_in.append(carry)
            carry = (x + y + carry) // 10
        self.problem = f"{a}+{b}"
        self.next = 0  # the column expected next
        self.wrong: int | None = None  # the column just got wrong, which a fix may follow

    def _has(self, col: int, x: int, y: int) -> bool:
        return 0 <= col < len(self.digits) and sorted(self.digits[col]) == sorted((x, y))

    def _judge(self, col: int, eq: str, terms: list[int], total: int) -> str:
        """"" when the equation is right for column `col`, else the reason."""
        where = f"column {col + 1}: {eq}"
        carry = self.carry_in[col]
        if len(terms) > 3:
            return f"{where} adds {len(terms)} numbers; a column adds two digits and maybe a carry of 1"
        if len(terms) == 3 and terms[2] != 1:
            return f"{where} adds {terms[2]} as the carry; a carry is 1"
        written = len(terms) == 3
        if carry and not written:
            return f"{where} forgets the carry"
        if written and not carry:
            return f"{where} adds a carry, but column {col} did not carry" if col else f"{where} adds a carry to the units"
        if total != sum(terms):
            return f"{where} is wrong: {'+'.join(map(str, terms))}={sum(terms)}"
        return ""

    def step(self, eq: str) -> tuple[float, str]:
        """(score, reason) of the next equation, moving through the columns."""
        left, _, right = eq.partition("=")
        terms, total = [int(t) for t in left.split("+")], int(right)
        x, y = terms[0], terms[1]
        fix = self.wrong is not None and self._has(self.wrong, x, y)
        if fix and not self._judge(self.wrong, eq, terms, total):
            self.wrong = None
            return 1.0, ""
        if self._has(self.next, x, y) or not fix:
            if not self._has(self.next, x, y):
                other = next((c for c in range(len(self.digits)) if self._has(c, x, y)), None)
                if other is not None:
                    return 0.0, (f"{eq} is column {other + 1} out of order: column {self.next + 1} comes next"
                                 if self.next < len(self.digits) else f"{eq} repeats column {other + 1}")
                if self.next >= len(self.digits):
                    return 0.0, f"{eq} is an extra step: {self.problem} has {len(self.digits)} columns"
                x0, y0 = self.digits[self.next]
                col, self.next = self.next, self.next + 1
                self.wrong = col
                return 0.0, f"column {col + 1}: {eq} does not add its digits {x0}+{y0}"
            col, self.next = self.next, self.next + 1
        else:
            col = self.wrong
        reason = self._judge(col, eq, terms, total)
        self.wrong = col if reason else None
        return (0.0, reason) if reason else (1.0, "")


@step_reward
def column_steps_reward(completions: list[str], *, steps: list[list[tuple[int, int]]] | None = None,
                        prompts: list[str] | None = None, **columns) -> list[list[Step]]:
    """A score for each column equation of an embedded-task completion (module docstring)."""
    out = []
    for i, text in enumerate(completions):
        start, end = _think(text)
        equations = [m for m in _EQUATION.finditer(text, start, end)]
        problem = _problem(i, prompts, columns)
        if problem is None:
            reason = "no problem to check against: no a/b columns and no 'A+B?' in the prompt or question"
            out.append([] if steps is None else [Step(e, None, reason) for _, e in steps[i]])
            continue
        follow = _Columns(*problem)
        judged = [(m, *follow.step(m.group())) for m in equations]
        if steps is None:
            out.append([Step(m.end(), score, reason) for m, score, reason in judged])
            continue
        spans = []
        for s, e in steps[i]:
            inside = [(score, reason) for m, score, reason in judged if s <= m.start() and m.end() <= e]
            if not inside:
                spans.append(Step(e, None, "no column equation in this step"))
            else:
                spans.append(Step(e, min(sc for sc, _ in inside), "; ".join(r for _, r in inside if r)))
        out.append(spans)
    return out
