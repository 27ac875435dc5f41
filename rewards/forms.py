"""Answers that are neither numbers nor expressions: ratios, clock times and words.

The rules (docs/answers.md has the table):

- **Ratio** ``a:b`` (or ``a:b:c``...; each term a plain number, spaces allowed): equal to any answer
  with the same proportions: ``3:4`` equals ``6:8``, ``3/4``, ``\\frac{3}{4}`` and ``0.75``, as
  math-verify reads a ratio; ``4:3`` does not. A ratio of three or more terms only equals a ratio.
- **Clock time** ``3:30 p.m.``, ``3:30pm``, ``3 PM``, ``15:30``, ``15:30:00``, ``7 o'clock``:
  equal when they name the same minute of the day; ``3:30 p.m.`` equals ``15:30``. A time written
  without a.m./p.m. and with an hour from 1 to 12 (``3:30``) could be either half of the day, so
  it equals both (compared modulo 12 hours), as a percent on one side only matches either
  reading. ``24:00`` is ``0:00``.
- A gold ``h:mm`` without a.m./p.m. (``1:30``, ``2:10``) is both a valid ratio and a valid time:
  an answer equal to it under either reading is accepted.
- **Words** (names, yes/no, options such as ``Rug B`` or ``(C)``): compared as normalised text,
  the same rule for every word answer: case folded, ``\\text{}`` and quotes removed, apostrophes
  dropped (``men's`` -> ``mens``), every other punctuation mark a space, the article ``the`` and
  ``an`` dropped wherever they stand and ``a`` only as the first of several words (``Rug A`` keeps
  its ``a``), spaces collapsed; then exact equality. ``Mrs. Hilt`` equals ``mrs hilt``, ``The men's
  track team`` equals ``men's track team``; ``Rug B`` does not equal ``B``.
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

from rewards.numeric import clean_latex

_TERM = r"(?:0|[1-9]\d*)(?:\.\d+)?"  # no leading zero: 3:04 is a time, not 3:4
_RATIO_RE = re.compile(rf"({_TERM})(?:\s*:\s*{_TERM})+")
_TERM_RE = re.compile(_TERM)
_TIME_RE = re.compile(
    r"(?P<h>\d{1,2})(?::(?P<m>\d{2})(?::(?P<s>\d{2}))?)?\s*"
    r"(?:(?P<mer>[ap])\.?\s?m\b\.?|(?P<oclock>o['’]?\s?clock\b))?",
    re.IGNORECASE,
)
_CLOCK_RE = re.compile(r"(?P<h>\d{1,2}):(?P<m>\d{2})")  # h:mm, also a ratio
_DAY = 24 * 60 * 60
_HALF_DAY = _DAY // 2

# Text answers: letters and the punctuation of names and sentences, nothing of mathematics.
_TEXT_RE = re.compile(r"[(\"'“‘]*[^\W\d_][^\d+*^=<>_\\{}\[\]|$%~/]*")
_LETTER_RUN_RE = re.compile(r"[^\W\d_]{2,}")
_OPTION_RE = re.compile(r"\(?\s*[A-Z]\s*[).]?")  # (B), B), B.
_APOSTROPHES_RE = re.compile(r"['’‘`´]")
_PUNCT_RE = re.compile(r"[^\w\s]|_")
_SPACES_RE = re.compile(r"\s+")


# ---------------------------------------------------------------------------------------------
# ratios


def parse_ratio(text: str) -> tuple[Fraction, ...] | None:
    """The terms of a ratio ``a:b[:c...]`` (plain numbers), or None."""
    s = text.strip().rstrip(".").strip()
    if ":" not in s or _RATIO_RE.fullmatch(s) is None:
        return None
    terms = tuple(Fraction(t) for t in _TERM_RE.findall(s))
    return None if all(t == 0 for t in terms) else terms


def ratios_match(pred: tuple[Fraction, ...], gold: tuple[Fraction, ...]) -> bool:
    """Same proportions: ``pred`` is ``gold`` times a non-zero factor (``6:8`` and ``3:4``)."""
    if len(pred) != len(gold):
        return False
    i = next(i for i, g in enumerate(gold) if g != 0)  # parse_ratio refuses all-zero ratios
    factor = pred[i] / gold[i]
    return factor != 0 and all(p == factor * g for p, g in zip(pred, gold, strict=True))


def ratio_value(terms: tuple[Fraction, ...]) -> Fraction | None:
    """The number a two-term ratio stands for (``3:4`` -> 3/4); None for other ratios."""
    if len(terms) != 2 or terms[1] == 0:
        return None
    return terms[0] / terms[1]


# ---------------------------------------------------------------------------------------------
# clock times


def parse_time(text: str) -> tuple[int, bool] | None:
    """A clock time as (seconds since midnight, whether it could be either half of the day), or
    None. A bare hour is a time only with a.m./p.m. or o'clock (``3`` is a number)."""
    s = text.strip()
    m = _TIME_RE.fullmatch(s)
    if m is None or not s or s[0] not in "0123456789":
        return None
    h, mer = int(m.group("h")), (m.group("mer") or "").lower()
    minutes, seconds = int(m.group("m") or 0), int(m.group("s") or 0)
    if m.group("m") is None and not mer and not m.group("oclock"):
        return None
    if minutes > 59 or seconds > 59:
        return None
    if mer:
        if not 1 <= h <= 12:
            return None
        h = h % 12 + (12 if mer == "p" else 0)
        ambiguous = False
    else:
        if h > 24 or (h == 24 and (minutes or seconds)):
            return None
        ambiguous = 1 <= h <= 12
    return (h * 3600 + minutes * 60 + seconds) % _DAY, ambiguous


def times_match(pred: tuple[int, bool], gold: tuple[int, bool]) -> bool:
    """Same time of day; modulo 12 hours when either side lacks a.m./p.m. and could be either."""
    (a, a_amb), (b, b_amb) = pred, gold
    if a_amb or b_amb:
        return a % _HALF_DAY == b % _HALF_DAY
    return a == b


def is_clock(text: str) -> bool:
    """Whether ``text`` is ``h:mm`` with a valid hour and minute (a ratio that is also a time)."""
    m = _CLOCK_RE.fullmatch(text.strip().rstrip(".").strip())
    return m is not None and int(m.group("h")) <= 24 and int(m.group("m")) <= 59


# ---------------------------------------------------------------------------------------------
# words


def is_text_answer(text: str) -> bool:
    """Whether an answer is words (a name, yes/no, an option such as ``Rug B`` or ``(C)``): no
    digit and no mathematical sign, and a run of two letters or a lone capital option letter."""
    s = clean_latex(text).strip()
    if not s or _TEXT_RE.fullmatch(s) is None:
        return bool(s) and _OPTION_RE.fullmatch(s) is not None
    return _LETTER_RUN_RE.search(s) is not None or _OPTION_RE.fullmatch(s) is not None


def normalize_text(text: str) -> str:
    """The comparable form of a word answer (module doc): ``The men's track team`` -> ``mens
    track team``, ``Mrs. Hilt`` -> ``mrs hilt``, ``(B)`` -> ``b``."""
    s = unicodedata.normalize("NFKC", clean_latex(text)).casefold()
    s = _APOSTROPHES_RE.sub("", s)
    words = _PUNCT_RE.sub(" ", s).split()
    words = [w for w in words if w not in ("the", "an")]
    if len(words) > 1 and words[0] == "a":
        words = words[1:]
    return _SPACES_RE.sub(" ", " ".join(words)).strip()
