"""Finding the final answer in a model's text: a CoT solution, a PoT program's output, a gold field.

Markers, strongest first (the last occurrence of a marker wins, as a model may revise itself):

1. ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces);
2. ``#### 72`` (GSM8K);
3. a line starting ``A:``, ``Answer:`` or ``Final answer:`` (GSM8K few-shot style; ``Job A: 2000``
   in the middle of a line is not a marker);
4. ``The (final) answer is ...`` up to the end of its line.

Without a marker, the last non-empty line is the answer only when it is a bare value: a number
(with units), ``label: number`` / ``label = number`` as programs print, or an expression without
words. A truncated solution ("... so she makes") has no final answer: None, never a guess such
as the last number in the text.
"""

from __future__ import annotations

import re

from rewards.numeric import parse_value

_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
_LINE_RE = re.compile(r"^[ \t*#>-]*(?:final[ \t]+answer|answer|a)[ \t*]*[:：][ \t*]*([^\n]*)$", re.I | re.M)
_ANSWER_IS_RE = re.compile(
    r"the[ \t]+(?:final[ \t]+)?answer[ \t]+(?:is|would[ \t]+be|will[ \t]+be)[ \t]*[:：]?[ \t]*([^\n]*)", re.I
)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LABELLED_RE = re.compile(r"^[A-Za-z_][A-Za-z_ ]{0,40}[:=][ \t]*(\S.*)$")  # "Total cost: 36.5"
_WORD_RE = re.compile(r"(?<!\\)\b[A-Za-z]{2,}\b")


def _boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced; None when absent or unclosed."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


def _tidy(answer: str) -> str | None:
    """Trim what trails an answer phrase: markdown emphasis, a final full stop, spaces."""
    a = answer.strip().strip("*").strip()
    inner = _boxed(a)
    if inner is not None:
        return inner or None
    if a.endswith(".") and not a.endswith(".."):
        a = a[:-1].rstrip()
    if len(a) >= 2 and a[0] == a[-1] == "$" and a.count("$") == 2:
        a = a[1:-1].strip()
    return a or None


def _bare_value(line: str) -> str | None:
    """The line itself when it is a bare answer (see module doc), else None."""
    s = line.strip()
    if not s:
        return None
    m = _LABELLED_RE.match(s)
    if m and parse_value(m.group(1)) is not None:
        return m.group(1).strip()
    if parse_value(s) is not None:
        return s
    if len(s) <= 120 and (s.startswith(("\\", "$")) or not _WORD_RE.search(s)):
        return s
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer in ``text`` (a CoT solution, a PoT program's stdout, a GSM8K solution),
    as written (not normalized); None when there is none."""
    if not text:
        return None
    boxed = _boxed(text)
    if boxed:
        return boxed
    for pattern in (_HASH_RE, _LINE_RE, _ANSWER_IS_RE):
        if pattern is _HASH_RE and "####" not in text:
            continue
        last = None
        for last in pattern.finditer(text):  # noqa: B007 - we want the last match
            pass
        if last is not None:
            return _tidy(last.group(1))
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return _bare_value(lines[-1]) if lines else None


def gold_answer(gold: str | None) -> str | None:
    """The gold final answer of a dataset field: the field itself when it is a bare answer
    (``"72"``, ``"\\frac{3}{2}"``), or the answer marked in a worked solution (``... #### 72``,
    ``A: 72``, ``\\boxed{72}``). None when the field is empty."""
    if gold is None:
        return None
    g = str(gold).strip()
    if not g:
        return None
    if "\n" not in g and "####" not in g and "\\boxed" not in g and not _LINE_RE.match(g):
        return g
    return extract_answer(g)
