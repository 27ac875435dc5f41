"""Deciding whether a predicted final answer equals the gold one: numeric path first, then symbolic.

1. Identical text: equal.
2. Both read as numbers (``rewards.numeric``): exact comparison up to float noise; final.
3. Same text once case, spacing, ``\\text{}`` and a final full stop are ignored: equal (word answers).
4. A numeric gold against a prediction with words in it: not equal.
5. Otherwise math-verify in the worker process (``rewards.symbolic``) under ``timeout_s``:
   ``\\frac{6}{4}`` equals ``3/2``, ``(x+1)^2`` equals ``x^2+2x+1``, ``3*6`` equals ``18``.
"""

from __future__ import annotations

import re

from rewards.numeric import clean_latex, numbers_match, parse_value
from rewards.symbolic import get_checker

_SPACES_RE = re.compile(r"\s+")
_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")  # a word, not a LaTeX command such as \sqrt


def _plain_text(s: str) -> str:
    """Case, spacing, ``\\text{}``, quotes and a final full stop ignored; inner punctuation kept
    (``1,5`` must not become ``15``)."""
    return _SPACES_RE.sub(" ", clean_latex(s)).strip(" .!?;:'\"`*").lower()


def is_equivalent(prediction: str | None, gold: str | None, timeout_s: float | None = None) -> bool:
    """Whether ``prediction`` (an extracted answer) equals ``gold`` (a gold answer);
    ``timeout_s`` limits the symbolic path (default ``rewards.symbolic.DEFAULT_TIMEOUT_S``)."""
    if prediction is None or gold is None:
        return False
    p, g = prediction.strip(), gold.strip()
    if not p or not g:
        return False
    if p == g:
        return True
    np_, ng = parse_value(p), parse_value(g)
    if np_ is not None and ng is not None:
        return numbers_match(np_, ng)
    if _plain_text(p) == _plain_text(g) != "":
        return True
    if ng is not None and _WORD_RE.search(p):
        # Words against a numeric gold ("None", "she has 18 left"): no expression to evaluate, and
        # early in RL most outputs look like this; skip the worker's ~25 ms.
        return False
    return get_checker().equivalent(p, g, timeout_s)


def is_parseable_gold(gold: str | None, timeout_s: float | None = None) -> bool:
    """Whether a gold answer can be compared with at all: a number, or something math-verify reads."""
    if gold is None or not gold.strip():
        return False
    if parse_value(gold) is not None:
        return True
    return get_checker().parseable(gold.strip(), timeout_s)
