"""Quantity grounding: does a program use the problem's numbers, and only those? A check of the
revision loop's verifier (``RepairOptions.grounding``), beside the sandbox and the PRM; no gold.

A word problem gives its quantities; a PoT program that answers it copies them into its code. Two
slips are visible without knowing the answer:

- **unused**: a number the problem gives appears nowhere in the program (a skipped operation, the
  usual error of the tiny policy on the hard split's four-operation problems);
- **ungrounded**: the program writes a number the problem does not give (a miscopied quantity,
  ``eggs = 55`` for "5 eggs").

Why our own check: neither the PRM (near chance as a flag on one answer, docs/rl.md) nor the sandbox
sees these slips, and no library we use checks a program against its problem's quantities. It is a
heuristic for quantity word problems: a problem with a distractor number, or a quantity written in
words the table below does not know ("a score"), or a unit constant ("60 minutes") gives a false
flag, which costs a revision attempt, not an answer (the loop keeps the version the verifier ranks
best, or the answer most of its runs print).
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Sequence

# digits with thousands separators and decimals ("1,200", "$3.50"), not part of a word ("x2")
_NUMBER_RE = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.])\d+(?:\.\d+)?")
# number words a problem may use for a quantity the program then writes as digits
_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
          "ten": 10, "eleven": 11, "twelve": 12, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
          "hundred": 100, "thousand": 1000, "dozen": 12, "twice": 2, "double": 2, "triple": 3, "thrice": 3,
          "half": 2, "quarter": 4, "percent": 100, "%": 100, "week": 7, "hour": 60, "minute": 60, "day": 24}
_WORD_RE = re.compile(r"\b(" + "|".join(sorted((w for w in _WORDS if w.isalpha()), key=len, reverse=True))
                      + r")s?\b|%", re.IGNORECASE)
# written by programs for reasons other than a quantity: the remainder test of ``assert x % k == 0``
_ALWAYS_ALLOWED = frozenset({0.0})


def question_numbers(question: str) -> list[float]:
    """The numbers the problem writes in digits, in order ("1,200" is 1200)."""
    return [float(m.replace(",", "")) for m in _NUMBER_RE.findall(question)]


def implied_numbers(question: str) -> set[float]:
    """Numbers the problem gives in words ("twice", "a dozen", "half", "percent")."""
    out = set()
    for m in _WORD_RE.finditer(question):
        word = (m.group(1) or m.group(0)).lower()
        out.add(float(_WORDS[word]))
        if word == "half":
            out.add(0.5)
        if word == "quarter":
            out.add(0.25)
    return out


def step_numbers(step: str) -> list[float] | None:
    """The numeric literals one step writes, in source order (``-5`` counts as 5); None when the step
    does not parse."""
    numbers = _step_numbers(step)
    return None if numbers is None else list(numbers)


@functools.lru_cache(maxsize=1 << 14)  # eval with repair checks thousands of candidates that share most steps
def _step_numbers(step: str) -> tuple[float, ...] | None:
    try:
        tree = ast.parse(step)
    except SyntaxError:
        return None
    found = [n for n in ast.walk(tree)
             if isinstance(n, ast.Constant) and isinstance(n.value, int | float) and not isinstance(n.value, bool)]
    return tuple(float(n.value) for n in sorted(found, key=lambda n: (n.lineno, n.col_offset)))


def _show(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


def check_grounding(question: str, steps: Sequence[str]) -> tuple[int, str] | None:
    """The first grounding slip of a program (its steps, as ``split_program`` cuts them): (0-based step
    to revise from, reason), or None when every number the problem gives is used and every number the
    program writes is the problem's. An unused number is flagged at the first step that uses a number the
    problem gives after it (where the missing step belongs), else at the last step; a number the problem
    does not give, at the step that writes it; the earlier of the two wins. A step that does not parse is
    left to the sandbox."""
    given = question_numbers(question)
    if not given or not steps:
        return None
    allowed = set(given) | implied_numbers(question) | _ALWAYS_ALLOWED
    per_step = [step_numbers(s) or [] for s in steps]
    used = {x for numbers in per_step for x in numbers}
    found: list[tuple[int, str]] = []
    for k, numbers in enumerate(per_step):
        stray = next((x for x in numbers if x not in allowed), None)
        if stray is not None:
            found.append((k, f"step {k + 1} uses {_show(stray)}, which is not a number in the problem"))
            break
    missing_at = next((i for i, x in enumerate(given) if x not in used), None)
    if missing_at is not None:
        later = set(given[missing_at + 1:]) - set(given[:missing_at + 1])
        step = next((k for k, numbers in enumerate(per_step) if later & set(numbers)), len(steps) - 1)
        found.append((step, f"the problem's {_show(given[missing_at])} is not used by the program"))
    return min(found, key=lambda f: f[0]) if found else None
