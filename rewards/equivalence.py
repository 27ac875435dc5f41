"""Deciding whether a predicted final answer equals the gold one.

The gold answer is read once (:func:`read_gold`, cached) into one of five kinds, and the
prediction is compared the way that kind says (docs/answers.md):

- ``number`` (``rewards.numeric``): ``72``, ``$1,000``, ``10{,}000``, ``25%``, ``1 1/2``,
  ``9 (apples)``, ``2.5 cups``. Compared exactly up to float noise; a percent on one side only
  matches either reading (``25%`` equals ``25`` and ``0.25``). A prediction that is not a number
  but has no words (``3*6``) goes to math-verify against the gold's value.
- ``ratio`` / ``time`` (``rewards.forms``): ``3:4`` equals ``6:8``, ``3/4`` and ``0.75``;
  ``3:30 p.m.`` equals ``15:30``; ``h:mm`` without a.m./p.m. is read both ways.
- ``text`` (``rewards.forms``): names, yes/no, options (``Mrs. Hilt``, ``Yes``, ``Rug B``,
  ``(C)``): normalised text, then exact equality; the same rule for every word answer.
- ``expression``: anything else math-verify reads (``\\frac{\\sqrt{3}}{2}``, ``x^2+2x+1``),
  compared by math-verify in the worker process (``rewards.symbolic``) under ``timeout_s``. A
  unit after an expression is dropped (``5\\sqrt{2} cm`` is ``5\\sqrt{2}``).

A gold that is none of these cannot be read: None. In particular a number with words around it
that are not a unit (``18 or more``, ``Room 101``, ``5 apples and 3 pears``) is never handed to
math-verify, which would read its words as a product of free symbols (``9*a*p*p*l*e*s``) and
judge every correct answer wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

from rewards.forms import (
    is_clock,
    is_text_answer,
    normalize_text,
    parse_ratio,
    parse_time,
    ratio_value,
    ratios_match,
    times_match,
)
from rewards.numeric import clean_latex, format_fraction, numbers_match, parse_value, unit_ok
from rewards.symbolic import get_checker

_SPACES_RE = re.compile(r"\s+")
_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")  # a word, not a LaTeX command such as \sqrt
# A word standing on its own ("9 apples", "(cups)"), not letters of a formula ("2ab", "\sqrt").
_FREE_WORD_RE = re.compile(r"(?<![\w\\])[^\W\d_]{2,}(?!\w)")
# What is left of "Room 101" or "5 apples and 3 pears" without its words: numbers only.
_NUMBERS_ONLY_RE = re.compile(r"[\d\s.,:;$%()/'-]*\d[\d\s.,:;$%()/'-]*")
# An expression followed by a unit: "5\sqrt{2} cm", "3\pi (square meters)".
_UNIT_TAIL_RE = re.compile(r"(?P<core>.*?[\w})\]])(?:\s*\((?P<punit>[^\W\d_][^\W\d_ .'/-]*(?:[ .'/-]+[^\W\d_]+)*)\)"
                           r"|\s+(?P<unit>[^\W\d_][^\W\d_ .'/-]*(?:[ .'/-]+[^\W\d_]+)*))[\s.]*", re.DOTALL)

NUMBER, RATIO, TIME, TEXT, EXPRESSION = "number", "ratio", "time", "text", "expression"


@dataclass(frozen=True, slots=True)
class Gold:
    """A gold answer as read by :func:`read_gold`: its ``kind`` and what it is compared by
    (``value``: a parsed number, ratio terms, a time, normalised text or expression text);
    ``time`` also holds the clock reading of an ``h:mm`` ratio."""

    text: str
    kind: str
    value: Any
    time: tuple[int, bool] | None = None


def _plain_text(s: str) -> str:
    """Case, spacing, ``\\text{}``, quotes and a final full stop ignored; inner punctuation kept
    (``1,5`` must not become ``15``)."""
    return _SPACES_RE.sub(" ", clean_latex(s)).strip(" .!?;:'\"`*").lower()


def _strip_unit(text: str) -> str | None:
    """An expression with a unit after it, without the unit; None when the words after it are not
    a unit (``18 or more``) or words remain in what is left."""
    m = _UNIT_TAIL_RE.fullmatch(text)
    if m is None:
        return None
    unit = m.group("punit") or m.group("unit")
    core = m.group("core").strip()
    if not unit_ok(unit, parenthesised=m.group("punit") is not None)[0] or _FREE_WORD_RE.search(core):
        return None
    return core


@lru_cache(maxsize=65536)
def read_gold(gold: str | None, timeout_s: float | None = None) -> Gold | None:
    """What kind of answer ``gold`` (a gold final answer, see ``rewards.extract.gold_answer``) is,
    and its value; None when it cannot be read (module doc). Cached: a batch repeats its golds."""
    if gold is None:
        return None
    g = gold.strip()
    if not g:
        return None
    time = parse_time(g)  # before numbers: "3 PM" is not 3 PM-units
    if time is not None and not is_clock(g):
        return Gold(g, TIME, time)
    number = parse_value(g)
    if number is not None:
        return Gold(g, NUMBER, number)
    terms = parse_ratio(g)
    if terms is not None:
        return Gold(g, RATIO, terms, time)
    if time is not None:  # 1:05 (not a ratio)
        return Gold(g, TIME, time)
    if is_text_answer(g):
        text = normalize_text(g)
        return Gold(g, TEXT, text) if text else None
    plain = clean_latex(g)
    if _FREE_WORD_RE.search(plain):  # words around a number or an expression
        core = _strip_unit(plain)
        if core is not None:
            number = parse_value(core)
            if number is not None:
                return Gold(g, NUMBER, number)
            if get_checker().parseable(core, timeout_s):
                return Gold(g, EXPRESSION, core)
        if _NUMBERS_ONLY_RE.fullmatch(_FREE_WORD_RE.sub(" ", plain)):
            # numbers with words that are not a unit (18 or more, Room 101): never math-verify,
            # which would read the words as a product of free symbols
            return None
    if get_checker().parseable(g, timeout_s):
        return Gold(g, EXPRESSION, g)
    return None


def _equals_number(p: str, value: Fraction | int, pct: bool, timeout_s: float | None) -> bool:
    """A prediction that is not a plain number against a numeric gold: math-verify, unless the
    prediction has words (no expression to evaluate, and early in RL most outputs look like this:
    skip the worker's ~25 ms)."""
    if _WORD_RE.search(p):
        return False
    readings = [format_fraction(Fraction(value))] + ([format_fraction(Fraction(value, 100))] if pct else [])
    return any(get_checker().equivalent(p, r, timeout_s) for r in readings)


def is_equivalent(prediction: str | None, gold: str | None, timeout_s: float | None = None) -> bool:
    """Whether ``prediction`` (an extracted answer) equals ``gold`` (a gold answer); False when
    either is missing or the gold cannot be read. ``timeout_s`` limits the symbolic path (default
    ``rewards.symbolic.DEFAULT_TIMEOUT_S``)."""
    if prediction is None or gold is None:
        return False
    p = prediction.strip()
    g = read_gold(gold, timeout_s)
    if not p or g is None:
        return False
    if p == g.text:
        return True
    if g.kind == NUMBER:
        np_ = parse_value(p)
        if np_ is not None:
            return numbers_match(np_, g.value)
        terms = parse_ratio(p)
        if terms is not None:  # 3:4 for 0.75
            value = ratio_value(terms)
            return value is not None and numbers_match((value, False), g.value)
        return _equals_number(p, g.value[0], g.value[1], timeout_s)
    if g.kind == RATIO:
        if g.time is not None:
            time = parse_time(p)
            if time is not None and times_match(time, g.time):
                return True
        terms = parse_ratio(p)
        if terms is not None:
            return ratios_match(terms, g.value)
        value, np_ = ratio_value(g.value), parse_value(p)
        return value is not None and np_ is not None and numbers_match(np_, (value, False))
    if g.kind == TIME:
        time = parse_time(p)
        return time is not None and times_match(time, g.value)
    if g.kind == TEXT:
        return normalize_text(p) == g.value
    # an expression
    if _plain_text(p) == _plain_text(g.value) != "":
        return True
    return get_checker().equivalent(p, g.value, timeout_s)


def is_parseable_gold(gold: str | None, timeout_s: float | None = None) -> bool:
    """Whether a gold answer can be compared with at all (:func:`read_gold` reads it)."""
    return read_gold(gold, timeout_s) is not None
