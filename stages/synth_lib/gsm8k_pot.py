"""Offline conversion of GSM8K worked solutions into Program-of-Thought programs.

GSM8K solutions carry calculator annotations, ``48/2 = <<48/2=24>>24 clips in May``; some lines
state an equation in plain text only (``57+10 = 67 passengers``). Each such equation becomes one
assignment of a program, and the data flow is real: a number in a later equation that is the
result of an earlier one becomes the earlier step's variable, not a copied literal::

    clips_may = 48 / 2
    clips_altogether = 48 + clips_may
    print(clips_altogether)

Variable names come from the words around the equation in the solution's text. Every equation is
evaluated exactly (``fractions.Fraction``) and kept only when it reproduces the result the text
states (up to the text's rounding), so a misread equation never enters a program; the program
prints the step whose stated result is the gold answer. The sandbox then runs every program
(``stages.synth``), so what reaches the training data has executed and printed the gold answer.

    python -m stages.synth_lib.gsm8k_pot ../shared/data/gsm8k/train.jsonl --show 3
"""

from __future__ import annotations

import argparse
import ast
import builtins
import keyword
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

from stages.common.data import load_problems

_ANNOTATION_RE = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
_NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
# The stated result of a plain-text equation: "= 12", "= $1,200", "= 1/4", "= 1 1/2".
_STATED_RE = re.compile(rf"=\s*\$?\s*((?:\d+\s+)?(?:{_NUMBER})(?:\s*/\s*\d+)?)")
_MIXED_RE = re.compile(r"\b(\d+)\s+(\d+)\s*/\s*(\d+)\b")  # 1 1/2 -> (1 + 1/2)
_TIMES_X_RE = re.compile(r"(?<=[\d)%$])\s*[xX]\s*(?=[\d($.])")  # "2 x 16": the letter x as times
_PER_UNIT_RE = re.compile(r"[A-Za-z][\w'’-]*\s*/\s*[A-Za-z][\w'’-]*|/\s*[A-Za-z][\w'’-]*")  # miles/hour, $10/shirt
_WORDS_RE = re.compile(r"[A-Za-z][\w'’-]*")
_CLAUSE_BREAK_RE = re.compile(r"[;:!?=]|\.(?!\d)|,(?!\d{3})")
_TOKEN_RE = re.compile(rf"{_NUMBER}|[-+*/()]")
_OP_MAP = str.maketrans({"×": "*", "x": "*", "X": "*", "÷": "/", "−": "-", "–": "-"})
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z']*")
_CLAUSE_END_RE = re.compile(r"[.,;:!?()]|\bbecause\b|\bso\b|\bwhich\b|\band\b|\bthen\b", re.IGNORECASE)

_STOPWORDS = frozenset("""
a an the of in on at to for from by with into onto over under about as is are was were be been
being am do does did has have had having he she it they we you i his her its their our your my me
him them us this that these those there here what which who whom whose each every all any some
so then than thus therefore hence also only just more less much many very total totally would will
can could should shall might must if when while since after before up down out off now one
s t same other another because both either neither not no yes such own need needs needed spend spent get
gets got make makes made take takes took give gives gave find found means mean meaning equal equals
altogether overall therefore hence
""".split())
_RESERVED = frozenset(keyword.kwlist) | frozenset(dir(builtins))
_MAX_NAME_WORDS = 3
_MAX_NAME_CHARS = 32


class _BadExpression(ValueError):
    pass


@dataclass(frozen=True)
class Equation:
    """One arithmetic step of a worked solution."""

    line: int  # 0-based line of the solution
    tokens: tuple[str, ...]  # numbers (canonical text) and operators of the left side
    value: Fraction  # the left side evaluated exactly
    stated: Fraction  # the result the text states
    annotated: bool  # from a <<...>> annotation (else a plain-text equation)
    before: str  # the line's text before the equation
    after: str  # the line's text after the stated result


@dataclass
class Conversion:
    """The program of one solution, or the reason there is none."""

    program: str | None
    reason: str | None = None
    steps: int = 0
    links: int = 0  # uses of earlier results as variables (the data flow)
    equations: list[Equation] = field(default_factory=list)


def canonical_number(text: str) -> str:
    """``1,200`` -> ``1200``, ``.5`` -> ``0.5``, ``007`` -> ``7`` (Python rejects leading zeros)."""
    t = text.replace(",", "")
    whole, dot, frac = t.partition(".")
    whole = whole.lstrip("0") or "0"
    return f"{whole}.{frac}" if dot and frac else whole


def _tokens(expr: str) -> list[str]:
    expr = expr.replace("$", " ").replace("%", " ").translate(_OP_MAP)
    pos, out = 0, []
    for m in _TOKEN_RE.finditer(expr):
        if expr[pos : m.start()].strip():
            raise _BadExpression(f"unexpected text {expr[pos:m.start()]!r}")
        tok = m.group(0)
        out.append(canonical_number(tok) if tok[0].isdigit() or tok[0] == "." else tok)
        pos = m.end()
    if expr[pos:].strip():
        raise _BadExpression(f"unexpected text {expr[pos:]!r}")
    return out


def evaluate(tokens: Iterable[str], names: dict[str, Fraction] | None = None) -> Fraction:
    """Exact value of an arithmetic token list (numbers, ``names``, + - * /, parentheses)."""
    text = " ".join(tokens)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise _BadExpression(f"not an expression: {text!r}") from e

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return Fraction(str(node.value))
        if isinstance(node, ast.Name) and names is not None and node.id in names:
            return names[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if b == 0:
                raise _BadExpression("division by zero")
            return a / b
        raise _BadExpression(f"unsupported syntax in {text!r}")

    return ev(tree)


def _matches_stated(value: Fraction, stated: Fraction, stated_text: str) -> bool:
    """The exact value equals the stated result, up to the stated result's rounding or
    truncation when it has decimals (``<<10/3=3.33>>``); a whole number must be exact."""
    if value == stated:
        return True
    decimals = len(stated_text.partition(".")[2])
    return decimals > 0 and abs(value - stated) <= Fraction(1, 10**decimals)


def _has_operator(tokens: list[str]) -> bool:
    return any(t in "+-*/" for t in tokens[1:]) and sum(t[0].isdigit() for t in tokens) >= 2


def parse_equations(solution: str) -> list[Equation]:
    """The arithmetic steps of a worked solution (the text before ``####``), in order."""
    body = solution.split("####")[0]
    out: list[Equation] = []
    for lineno, line in enumerate(body.splitlines()):
        annotations = list(_ANNOTATION_RE.finditer(line))
        if annotations:
            for m in annotations:
                eq = _annotation_equation(lineno, line, m)
                if eq is not None:
                    out.append(eq)
            continue
        out += _text_equations(lineno, line)
    return out


def _annotation_equation(lineno: int, line: str, m: re.Match) -> Equation | None:
    stated_text = m.group(2).strip().replace("$", "")
    if not _NUMBER_RE.fullmatch(stated_text.lstrip("-")):
        return None
    try:
        tokens = _tokens(m.group(1))
        value = evaluate(tokens)
    except _BadExpression:
        return None
    stated = Fraction(canonical_number(stated_text.lstrip("-"))) * (-1 if stated_text.startswith("-") else 1)
    if not tokens or not _matches_stated(value, stated, stated_text):
        return None
    # The text after the annotation repeats the result ("<<48/2=24>>24 clips"): skip it.
    rest = line[m.end():]
    rest = re.sub(rf"^\s*\$?\s*-?(?:{_NUMBER})", "", rest)
    before = line[: m.start()]
    # The text before usually restates the expression ("48/2 = "): keep only the words before it.
    before = re.sub(r"[\d.,$%()+\-*/x×÷−–=\s]*$", "", before)
    return Equation(lineno, tuple(tokens), value, stated, True, before, rest)


def _text_equations(lineno: int, line: str) -> list[Equation]:
    out = []
    for m in _STATED_RE.finditer(line):
        # The left side runs back to the start of its clause; unit words inside it are dropped
        # ("7 kittens / 20 kittens * 100%" reads 7 / 20 * 100) and the equation is the longest
        # suffix of it that evaluates to the stated result, so a misread run is never kept.
        left = line[: m.start()]
        start = max((b.end() for b in _CLAUSE_BREAK_RE.finditer(left)), default=0)
        run = _MIXED_RE.sub(r"(\1 + \2/\3)", _TIMES_X_RE.sub(" * ", left[start:]))
        run = _WORDS_RE.sub(" ", _PER_UNIT_RE.sub(" ", run))
        try:
            tokens = _tokens(run)
            stated_text = " ".join(m.group(1).split())
            stated = evaluate(_tokens(_MIXED_RE.sub(r"(\1 + \2/\3)", stated_text)))
        except _BadExpression:
            continue
        exact = "/" in stated_text or "." not in stated_text
        for i in range(len(tokens)):
            cand = tokens[i:]
            if cand[0] in "+*/)" or not _has_operator(cand) or not _balanced(cand):
                continue
            try:
                value = evaluate(cand)
            except _BadExpression:
                continue
            if value == stated or (not exact and _matches_stated(value, stated, stated_text)):
                out.append(Equation(lineno, tuple(cand), value, stated, False, left[start:], line[m.end():]))
                break
    return out


def _balanced(tokens: list[str]) -> bool:
    depth = 0
    for t in tokens:
        depth += (t == "(") - (t == ")")
        if depth < 0:
            return False
    return depth == 0


# ---------------------------------------------------------------------------------------------
# Naming


def _content_words(text: str) -> list[str]:
    return [w.lower().replace("'", "") for w in _WORD_RE.findall(text) if w.lower() not in _STOPWORDS
            and len(w) > 1]


def _identifier(words: list[str]) -> str | None:
    words = [re.sub(r"\W", "", w) for w in words if re.sub(r"\W", "", w)]
    if not words:
        return None
    name = "_".join(words[:_MAX_NAME_WORDS])[:_MAX_NAME_CHARS].strip("_")
    if not name.isidentifier():
        return None
    if name in _RESERVED:
        name += "_value"
    return name


def variable_name(eq: Equation, used: set[str], index: int) -> str:
    """A readable, unique name for an equation's result: the words after the result
    ("24 clips in May" -> ``clips_may``), else the last words before the equation in its clause
    ("she earned 0.2 x 50" -> ``earned``), else ``step_<k>``."""
    after = _CLAUSE_END_RE.split(eq.after, maxsplit=1)[0]
    name = _identifier(_content_words(after))
    if name is None:
        clause = _CLAUSE_BREAK_RE.split(eq.before)[-1]
        name = _identifier(_content_words(clause)[-2:])
    base = name or f"step_{index}"
    name, k = base, 2
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


# ---------------------------------------------------------------------------------------------
# Programs


def _render(tokens: Iterable[str]) -> str:
    out: list[str] = []
    prev: str | None = None
    for t in tokens:
        unary = t == "-" and (prev is None or prev in "+-*/(")
        if t in "+-*/" and not unary:
            out.append(f" {t} ")
        else:
            out.append(t)
        prev = t
    return "".join(out).replace("( ", "(").replace(" )", ")")


def convert(question: str, solution: str, gold: str) -> Conversion:
    """The PoT program of one GSM8K problem (question, worked solution, gold answer)."""
    equations = parse_equations(solution)
    if not equations:
        return Conversion(None, "no equation in the solution")
    try:
        gold_value = Fraction(canonical_number(gold.strip().lstrip("-").replace("$", "")))
        if gold.strip().startswith("-"):
            gold_value = -gold_value
    except (ValueError, ZeroDivisionError):
        return Conversion(None, f"gold answer {gold!r} is not a number", equations=equations)
    final = max((i for i, eq in enumerate(equations) if eq.stated == gold_value or eq.value == gold_value),
                default=None)
    if final is None:
        return Conversion(None, "no equation computes the gold answer", equations=equations)
    question_numbers = {Fraction(canonical_number(n)) for n in _NUMBER_RE.findall(question)}
    steps = equations[: final + 1]
    used: set[str] = set()
    names: list[str] = []
    values: dict[str, Fraction] = {}  # what each variable holds when the program runs
    by_result: dict[Fraction, int] = {}  # a result -> the latest step that produced it
    lines: list[str] = []
    links = 0
    for i, eq in enumerate(steps):
        rendered, n_links = [], 0
        for t in eq.tokens:
            src = by_result.get(Fraction(t)) if t[0].isdigit() else None
            # A number an earlier step produced is that step's variable, unless the question
            # states it and it comes from an older step than the previous one (then the question
            # is the likelier source).
            if src is not None and (Fraction(t) not in question_numbers or src == i - 1):
                rendered.append(names[src])
                n_links += 1
            else:
                rendered.append(t)
        # The variables must reproduce the step's exact value; a variable holding an unrounded
        # value where the text used a rounded one (3.333... for 3.33) keeps the text's number.
        if n_links and evaluate(rendered, values) != eq.value:
            rendered, n_links = list(eq.tokens), 0
        links += n_links
        name = variable_name(eq, used, i + 1)
        names.append(name)
        values[name] = eq.value
        lines.append(f"{name} = {_render(rendered)}")
        by_result[eq.stated] = i
        by_result.setdefault(eq.value, i)
    last = steps[final]
    if last.value == gold_value:
        lines.append(f"print({names[final]})")
    else:  # the solution rounds its last result to the gold answer
        decimals = len(canonical_number(gold.strip().lstrip("-")).partition(".")[2])
        if round(last.value, decimals) != gold_value:
            return Conversion(None, "the last step rounds differently from the gold answer", equations=equations)
        lines.append(f"print(round({names[final]}, {decimals}))" if decimals else f"print(round({names[final]}))")
    return Conversion("\n".join(lines) + "\n", None, steps=len(steps), links=links, equations=equations)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stages.synth_lib.gsm8k_pot", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="a GSM8K jsonl (raw rows with '#### answer') or gsm8k:<split>")
    ap.add_argument("--show", type=int, default=0, help="print this many programs")
    args = ap.parse_args(argv)
    problems = load_problems(args.source)
    reasons: dict[str, int] = {}
    ok = 0
    for p in problems:
        conv = convert(p["question"], p["solution"], p["answer"])
        if conv.program is None:
            reasons[conv.reason or "?"] = reasons.get(conv.reason or "?", 0) + 1
            continue
        ok += 1
        if ok <= args.show:
            print(f"# {p['id']}: {p['question']}\n{conv.program}")
    print(f"converted {ok}/{len(problems)} ({100 * ok / max(1, len(problems)):.1f}%); without a program: {reasons}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
