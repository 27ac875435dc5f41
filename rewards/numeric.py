"""The fast numeric path of answer checking: parse a final answer written as a number and compare.

Most GSM8K answers are integers, and most model answers are numbers dressed in commas,
currency signs, units, trailing zeros, percent signs or a simple LaTeX fraction. This module
reads those with one regular expression into an exact number (an ``int``, else a
:class:`fractions.Fraction`), so that a check costs microseconds; anything it cannot read is left to the symbolic path
(``rewards.symbolic``).

What counts as a number here (and nothing else, to stay unambiguous):

- an integer or decimal, optionally signed, with ``,`` thousands separators in groups of three
  (``1,000`` but not ``1,5``; also LaTeX's ``10{,}000`` and ``10\\,000``, and a thin space), an
  optional exponent (``1.5e+16``, as Python prints floats);
- a fraction ``a/b`` of such numbers, a mixed number ``1 1/2`` (``1\\frac{1}{2}`` in LaTeX, as
  math-verify reads it), or ``\\frac{a}{b}``;
- a currency sign before or after (``$``, ``€``, ``£``, ``¥``, ``₹``, ``USD`` ...);
- a trailing percent (``%``, ``\\%``, ``percent``): kept as a flag, see :func:`numbers_match`;
- trailing unit words (``18 dollars``, ``5 km/h``, ``3 square feet``), or words in parentheses
  (``9 (apples)``, ``2.5 (cups of flour)``, as some benchmarks write their gold answers); a scale
  word (``1.8 billion``) multiplies; words that change the meaning (``18 or 19``, ``3 times``,
  ``9 (or 10)``) do not count as units, nor do words that continue a sentence after a bare number
  (``18 for the``), nor lone letters that look like variables (``18x``);
- a leading ``x =`` or ``approximately``.
"""

from __future__ import annotations

import re
from fractions import Fraction

# Tolerance (relative, and absolute near zero) for float noise in program output
# (0.1 + 0.2 -> 0.30000000000000004): 1e-9, far below any rounding a person would write, so 0.33
# still differs from 1/3. Kept as its inverse so that whole numbers compare in int arithmetic.
_TOL_INV = 10**9

Number = int | Fraction

_CURRENCY = r"(?:[$€£¥₹]|usd|eur|gbp|dollars?\b|rs\.?)"
_NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+"
_NUM_RE = re.compile(
    rf"""
    (?:[a-z]\w*\s*=\s*|(?:approximately|approx\.?|about|around|roughly|≈|~)\s+)?  # x = / approximately
    (?P<sign>[-+]?)\s*(?:{_CURRENCY}\s*)?(?P<sign2>[-+]?)\s*
    (?:
        (?P<whole>\d+)\s+(?P<mn>\d+)\s*/\s*(?P<md>\d+)                            # mixed number 1 1/2
      | (?P<num>{_NUMBER})(?:e(?P<exp>[-+]?\d+))?(?:\s*/\s*(?P<den>{_NUMBER}))?  # 1,000.50 | 3/4 | 1e5
    )
    \s*(?:{_CURRENCY})?
    \s*(?P<pct>%|percent\b|per\s*cent\b)?
    \s*(?:(?P<unit>[^\W\d_][^\d=+*<>(){{}}\[\]|]{{0,40}}?(?:\^\{{?[23]\}}?)?)
          |\(\s*(?P<punit>[^\W\d_][^\d=+*<>(){{}}\[\]|]{{0,60}}?)\s*\))?               # 9 (apples)
    [\s.,;!]*$
    """,
    re.IGNORECASE | re.VERBOSE,
)
_SCALE = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
# Words after a number that make it something other than "the number, in some unit"...
_CHANGES_MEANING = frozenset("or and to plus minus times more less than not nor but except divided over by".split())
# ... and words that continue a sentence ("1432070 pesos for an" from a truncated solution); in
# parentheses ("25% (of the class)") these describe the unit.
_NOT_UNITS = _CHANGES_MEANING | frozenset("a an the for is are was were will would so which that if because".split())
# Lone letters after a number read as variables (18x, 3i, 5k?), except these unit symbols.
_LETTER_UNITS = frozenset("m g s h l".split())
_UNIT_WORD_RE = re.compile(r"[^\W\d_]+")

_LATEX_SUBS = [
    (re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}"), r" \1 "),
    (re.compile(r"(?<![\w.^])(\d+)\s*\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}"), r"\1 \2/\3"),  # 1\frac{1}{2}
    (re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}"), r"(\1)/(\2)"),
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°"), " "),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\[,;:! ]|\\q?quad"), ""),
    (re.compile(r"\\(?:left|right)\b"), ""),
    (re.compile(r"\\([$%])"), r"\1"),
    (re.compile(r"^\s*(?:\$|\\\(|\\\[)\s*|\s*(?:\$|\\\)|\\\])\s*$"), ""),
]
_THIN_SPACE_RE = re.compile(r"(?<=\d)[\u2009\u202f](?=\d{3}(?!\d))")
_PAREN_FRAC_RE = re.compile(r"^([-+]?)\s*\(([^()]+)\)/\(([^()]+)\)$")


def clean_latex(text: str) -> str:
    """Strip the LaTeX that only dresses a number: ``\\text{}``, ``\\$``, ``\\%``, ``{,}``, math
    delimiters, spacing commands; ``\\frac{a}{b}`` becomes ``(a)/(b)``."""
    s = text
    for pattern, repl in _LATEX_SUBS:
        s = pattern.sub(repl, s)
    s = s.strip()
    m = _PAREN_FRAC_RE.match(s)
    if m:  # (6)/(4) from \frac: keep the parentheses only if the parts are not plain numbers
        sign, a, b = m.group(1), m.group(2).strip(), m.group(3).strip()
        if re.fullmatch(r"[-+]?[\d.,]+", a) and re.fullmatch(r"[\d.,]+", b):
            s = f"{sign}{a}/{b}"
    return s


def _to_number(num: str) -> Number:
    """Exact value of a decimal numeral (commas allowed); an int when it is whole, as int
    arithmetic is several times faster than Fraction's and most answers are whole."""
    num = num.replace(",", "")
    whole, _, frac = num.partition(".")
    frac = frac.rstrip("0")
    if not frac:
        return int(whole or "0")
    return Fraction(int(whole + frac), 10 ** len(frac))


def unit_ok(unit: str, parenthesised: bool = False) -> tuple[bool, int]:
    """Whether trailing text is a unit, and the scale factor it implies (1.8 billion)."""
    words = [w.lower() for w in _UNIT_WORD_RE.findall(unit)]
    if not words or len(words) > (8 if parenthesised else 5):
        return False, 1
    if any(w in (_CHANGES_MEANING if parenthesised else _NOT_UNITS) for w in words):
        return False, 1
    if len(words) == 1 and len(words[0]) == 1 and words[0] not in _LETTER_UNITS:
        return False, 1
    return True, _SCALE.get(words[0], 1)


def parse_value(text: str) -> tuple[Number, bool] | None:
    """:func:`parse_number` with whole numbers left as ``int`` (the fast path of the checks)."""
    s = text.strip()
    if s.isdigit():  # the common case: a bare integer
        return int(s), False
    if not s or len(s) > 200:
        return None
    if "\\" in s or "{" in s or s[0] == "$" and s[-1] == "$":
        s = clean_latex(s)
    s = s.replace("−", "-").replace("–", "-")
    if "\u2009" in s or "\u202f" in s:  # thin spaces between digit groups: 10 000
        s = _THIN_SPACE_RE.sub("", s)
    m = _NUM_RE.fullmatch(s)
    if m is None:
        return None
    scale = 1
    unit, punit = m.group("unit"), m.group("punit")
    if unit or punit:
        ok, scale = unit_ok(unit or punit, parenthesised=bool(punit))
        if not ok:
            return None
    value: Number
    try:
        if m.group("whole") is not None:
            value = int(m.group("whole")) + Fraction(int(m.group("mn")), int(m.group("md")))
        else:
            value = _to_number(m.group("num"))
            if m.group("exp"):
                value *= Fraction(10) ** int(m.group("exp"))
            if m.group("den"):
                value = Fraction(value) / _to_number(m.group("den"))
    except (ZeroDivisionError, ValueError, OverflowError):
        return None
    if isinstance(value, Fraction) and value.denominator == 1:
        value = value.numerator
    if (m.group("sign") == "-") != (m.group("sign2") == "-"):
        value = -value
    return (value * scale if scale != 1 else value), m.group("pct") is not None


def parse_number(text: str) -> tuple[Fraction, bool] | None:
    """The exact value of an answer written as a number, and whether it carried a percent sign;
    None when the text is not (only) a number."""
    parsed = parse_value(text)
    return None if parsed is None else (Fraction(parsed[0]), parsed[1])


def _close(a: Number, b: Number) -> bool:
    if a == b:
        return True
    scaled = abs(a - b) * _TOL_INV
    return scaled <= 1 or scaled <= max(abs(a), abs(b))


def numbers_match(pred: tuple[Number, bool], gold: tuple[Number, bool]) -> bool:
    """Equality of two parsed numbers up to float noise. A percent on one side only matches
    either reading (``50%`` equals ``50`` as GSM8K writes percentages, and ``0.5``)."""
    (a, a_pct), (b, b_pct) = pred, gold
    if a_pct == b_pct:
        return _close(a, b)
    if a_pct:
        return _close(a, b) or _close(Fraction(a, 100), b)
    return _close(a, b) or _close(a, Fraction(b, 100))


def format_fraction(value: Fraction) -> str:
    """Canonical text of a number: ``72``, ``-0.5``, ``1000.25``; a fraction whose decimal does
    not terminate stays ``p/q``."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    digits = max(twos, fives)
    text = f"{abs(value.numerator) * 10**digits // value.denominator:0{digits + 1}d}"
    body = f"{text[:-digits]}.{text[-digits:]}".rstrip("0").rstrip(".")
    return f"-{body}" if value < 0 else body


def normalize_number(text: str) -> str | None:
    """Canonical form of an answer written as a number (``"$1,000.50"`` -> ``"1000.5"``,
    ``"50%"`` -> ``"0.5"``, ``"\\frac{6}{4}"`` -> ``"1.5"``), or None when it is not a number."""
    parsed = parse_number(text)
    if parsed is None:
        return None
    value, pct = parsed
    return format_fraction(value / 100 if pct else value)
