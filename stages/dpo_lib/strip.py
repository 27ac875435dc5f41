"""Strip a PoT program to what computes and prints its answer, on the AST (never with regexes).

:func:`strip_program` removes, from a program that prints its answer on the last line of its
output (the PoT answer contract, ``sandbox.config.last_output_line``):

- ``comments``: every comment (Python's own tokenizer finds them, so a ``#`` inside a string stays);
- ``docstrings``: string literals standing alone as statements (docstrings and string "comments");
- ``prints``: ``print(...)`` statements other than those that print the answer. The answer is
  printed by the last top-level statement that contains a ``print`` call (the *answer
  statement*); inside it, when it is a function, an ``if``/``with``/``try`` block, the same rule
  holds per block (the last statement with a print keeps it). A loop that prints is kept whole:
  its last iteration prints the answer;
- ``dead_assignments``: top-level assignments to names that nothing reads afterwards, when the
  value has no side effect (numbers, names, arithmetic, a few pure built-ins and ``math``);
- ``aliases`` (redundant assignments): ``a = b``, a name bound to another name and read once
  afterwards (the teacher's ``answer = total`` / ``print(answer)`` becomes ``print(total)``).

Statements that stay unchanged keep their source text (minus comments); a statement that loses
something inside it is written back with ``ast.unparse``. The result is only a candidate: the
pair builder runs it in the sandbox and keeps it only when it prints the same answer.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections import Counter
from dataclasses import dataclass, field

from stages.common.pot_style import SubstituteName

FEATURES = ("comments", "docstrings", "prints", "dead_assignments", "aliases")

# Calls whose result depends only on their arguments and that change nothing: an assignment of
# such a value that nothing reads can go. (A user function that shadows one of these names
# could print; the sandbox check after stripping catches any change of the answer.)
PURE_CALLS = frozenset({"abs", "round", "int", "float", "min", "max", "sum", "len", "str", "bool", "divmod", "pow",
                        "sorted", "list", "tuple", "set", "dict", "range", "Fraction", "Decimal"})
PURE_MODULES = frozenset({"math", "fractions", "decimal"})
# Programs that read or change their namespace by name: liveness cannot be known from the AST.
_DYNAMIC = frozenset({"eval", "exec", "locals", "globals", "vars", "__import__", "setattr", "delattr", "getattr"})
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_BLOCK_FIELDS = ("body", "orelse", "finalbody")
# Statements that run once, top to bottom: an alias is substituted only into one of these.
_SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Assert, ast.Return)


@dataclass
class Stripped:
    """What :func:`strip_program` made of a program: the stripped program (None when it does not
    parse, has no answer print, or nothing could be removed: ``reason`` says which) and how many
    of each feature it removed."""

    program: str | None
    removed: dict[str, int] = field(default_factory=dict)
    reason: str | None = None


def strip_program(program: str, features: tuple[str, ...] | list[str] = FEATURES) -> Stripped:
    """``program`` without the ``features`` it has (see the module docstring)."""
    unknown = sorted(set(features) - set(FEATURES))
    if unknown:
        raise ValueError(f"unknown strip feature(s) {unknown}; known: {', '.join(FEATURES)}")
    try:
        clean, comments = _without_comments(program)
        tree = ast.parse(clean)
    except (SyntaxError, tokenize.TokenError, IndentationError, ValueError):
        return Stripped(None, reason="unparseable")
    removed: Counter[str] = Counter()
    keep_comments = "comments" not in features
    if keep_comments:
        comment_lines = {row for row, col in comments.items() if not program.splitlines()[row][:col].strip()}
        source = program
    else:
        removed["comments"] = len(comments)
        comment_lines, source = set(), clean
    body = tree.body
    shared = _shared_lines(body)
    changed: set[int] = set()  # ids of the top-level statements rewritten (written back with ast.unparse)
    answer_at = _answer_statement(body)
    if answer_at is None:
        return Stripped(None, reason="no_answer_print")
    if "docstrings" in features:
        removed["docstrings"] = _remove_docstrings(body, changed, top=True)
        answer_at = _answer_statement(body)
    if "prints" in features and answer_at is not None:
        removed["prints"] = _remove_prints(body, answer_at, changed, top=True)
    if not _dynamic(tree):
        if "dead_assignments" in features:
            removed["dead_assignments"] = _remove_dead_assignments(body)
        if "aliases" in features:
            removed["aliases"] = _collapse_aliases(body, changed)
            if removed["aliases"] and "dead_assignments" in features:
                removed["dead_assignments"] += _remove_dead_assignments(body)
    removed = Counter({k: v for k, v in removed.items() if v})
    out = _render(body, source.splitlines(), changed, shared, comment_lines)
    if not removed or out.strip() == program.strip():
        return Stripped(None, dict(removed), reason="unchanged")
    return Stripped(out, dict(removed))


def _first_line(stmt: ast.stmt) -> int:
    """0-based first line of a statement, its decorators included."""
    return min([stmt.lineno, *(d.lineno for d in getattr(stmt, "decorator_list", ()))]) - 1


def _shared_lines(body: list[ast.stmt]) -> set[int]:
    """0-based lines that hold more than one top-level statement (``a = 1; b = 2``)."""
    seen: Counter[int] = Counter()
    for stmt in body:
        seen.update({_first_line(stmt), stmt.end_lineno - 1})
    return {line for line, n in seen.items() if n > 1}


def _render(body: list[ast.stmt], lines: list[str], changed: set[int], shared: set[int],
            comment_lines: set[int]) -> str:
    """The kept statements: their own lines as written (a statement that shares a line, only its
    text; a rewritten one, ``ast.unparse``), and, when comments are kept, the comment lines before
    each of them and after the last. Blank lines go."""
    out: list[str] = []
    after_previous = 0
    for stmt in body:
        first, last = _first_line(stmt), stmt.end_lineno - 1
        out += [lines[i] for i in range(after_previous, first) if i in comment_lines]
        if id(stmt) in changed:
            out.append(ast.unparse(stmt))
        elif first in shared or last in shared:
            out.append(_segment(lines, stmt))
        else:
            out += [line for line in lines[first: last + 1] if line.strip()]
        after_previous = max(after_previous, last + 1)
    out += [lines[i] for i in range(after_previous, len(lines)) if i in comment_lines]
    return "\n".join(out) + "\n"


def _cut(line: str, start: int | None, end: int | None) -> str:
    """``line[start:end]`` in UTF-8 bytes, as the AST's column offsets count."""
    if line.isascii():
        return line[start:end]
    return line.encode()[start:end].decode()


def _segment(lines: list[str], node: ast.stmt) -> str:
    """The source text of a statement (``ast.get_source_segment`` on lines split once)."""
    first, last = node.lineno - 1, node.end_lineno - 1
    if first == last:
        return _cut(lines[first], node.col_offset, node.end_col_offset)
    return "\n".join([_cut(lines[first], node.col_offset, None), *lines[first + 1: last],
                      _cut(lines[last], None, node.end_col_offset)])


# ---------------------------------------------------------------------------------------------
# comments


def _without_comments(program: str) -> tuple[str, dict[int, int]]:
    """The program with every comment cut off its line (every other token keeps its line and
    column, so the AST of the result has the original positions), and where the comments were
    (0-based line: column)."""
    lines = program.splitlines()
    cuts: dict[int, int] = {}
    for tok in tokenize.generate_tokens(io.StringIO(program).readline):
        if tok.type == tokenize.COMMENT:
            cuts[tok.start[0] - 1] = tok.start[1]
    for row, col in cuts.items():
        lines[row] = lines[row][:col].rstrip()
    return "\n".join(lines) + "\n", cuts


# ---------------------------------------------------------------------------------------------
# the answer statement and print calls


def _is_print_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"


def _has_print(node: ast.AST) -> bool:
    return any(_is_print_call(n) for n in ast.walk(node))


def _is_print_statement(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and _is_print_call(stmt.value)


def _answer_statement(body: list[ast.stmt]) -> int | None:
    """Index of the last statement of ``body`` that contains a print call."""
    for i in range(len(body) - 1, -1, -1):
        if _has_print(body[i]):
            return i
    return None


def _blocks(stmt: ast.stmt) -> list[list[ast.stmt]]:
    """The statement lists directly inside a compound statement (``try`` handlers included)."""
    blocks = [getattr(stmt, f) for f in _BLOCK_FIELDS if getattr(stmt, f, None)]
    if isinstance(stmt, ast.Try | ast.TryStar):
        blocks += [h.body for h in stmt.handlers]
    if isinstance(stmt, ast.Match):
        blocks += [c.body for c in stmt.cases]
    return blocks


def _fill_empty(block: list[ast.stmt]) -> None:
    if not block:
        block.append(ast.Pass())


def _remove_prints(body: list[ast.stmt], answer_at: int, changed: set[int], *, top: bool) -> int:
    """Remove the print statements of ``body`` before its answer statement (at any depth), and
    those inside the answer statement before its own answer (per block; loops are kept whole)."""
    count = 0
    keep: list[ast.stmt] = []
    for i, stmt in enumerate(body):
        if i < answer_at:
            if _is_print_statement(stmt):
                count += 1
                continue
            n = _remove_all_prints(stmt)
        elif i == answer_at and not isinstance(stmt, ast.For | ast.AsyncFor | ast.While) and not _is_print_statement(
                stmt):
            n = 0
            for block in _blocks(stmt):
                inner = _answer_statement(block)
                if inner is not None:
                    n += _remove_prints(block, inner, changed, top=False)
                    _fill_empty(block)
        else:
            n = 0
        if n and top:
            changed.add(id(stmt))
        count += n
        keep.append(stmt)
    body[:] = keep
    return count


def _remove_all_prints(stmt: ast.stmt) -> int:
    """Remove every print statement nested inside a compound statement."""
    count = 0
    for block in _blocks(stmt):
        before = len(block)
        block[:] = [s for s in block if not _is_print_statement(s)]
        count += before - len(block)
        for s in block:
            count += _remove_all_prints(s)
        _fill_empty(block)
    return count


# ---------------------------------------------------------------------------------------------
# docstrings


def _is_string_statement(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _remove_docstrings(body: list[ast.stmt], changed: set[int], *, top: bool) -> int:
    count = 0
    keep = []
    for stmt in body:
        if _is_string_statement(stmt):
            count += 1
            continue
        n = 0
        for block in _blocks(stmt):
            n += _remove_docstrings(block, changed, top=False)
            _fill_empty(block)
        if n and top:
            changed.add(id(stmt))
        count += n
        keep.append(stmt)
    body[:] = keep
    return count


# ---------------------------------------------------------------------------------------------
# dead assignments and aliases (top-level code only)


def _dynamic(tree: ast.AST) -> bool:
    """Whether the program touches names in ways the AST cannot follow (``eval``, ``globals()``,
    ``del``, ``global``, star imports)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in _DYNAMIC:
            return True
        if isinstance(node, ast.Delete | ast.Global | ast.Nonlocal):
            return True
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return True
    return False


def _loads(node: ast.AST) -> Counter[str]:
    return Counter(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load))


def _nested_loads(body: list[ast.stmt]) -> set[str]:
    """Names read inside functions, lambdas and classes: they may be read whenever those run."""
    names: set[str] = set()
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, _SCOPES):
                names |= set(_loads(node))
    return names


def _targets(stmt: ast.stmt) -> list[str] | None:
    """The names a plain top-level binding writes (``a = b = value``, ``a: int = value``,
    ``a += value``), or None for anything else (tuple targets, attributes, subscripts)."""
    if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
        return [t.id for t in stmt.targets]
    if isinstance(stmt, ast.AnnAssign | ast.AugAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return [stmt.target.id]
    return None


def _pure(node: ast.AST) -> bool:
    """Whether evaluating ``node`` can have no effect besides its value."""
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            func = n.func
            if isinstance(func, ast.Name) and func.id in PURE_CALLS:
                continue
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in PURE_MODULES:
                continue
            return False
        if isinstance(n, ast.Await | ast.Yield | ast.YieldFrom | ast.NamedExpr | ast.Lambda):
            return False
    return True


def _remove_dead_assignments(body: list[ast.stmt]) -> int:
    """Remove top-level bindings that nothing reads afterwards (a backward liveness pass over the
    top-level statements, repeated until nothing changes)."""
    total = 0
    while True:
        live = _nested_loads(body)
        dead: set[int] = set()
        for i in range(len(body) - 1, -1, -1):
            stmt = body[i]
            names = _targets(stmt)
            if names is not None and not (set(names) & live) and _pure(stmt.value):
                dead.add(i)
                continue
            if names is not None and isinstance(stmt, ast.Assign | ast.AnnAssign):
                live -= set(names)  # rebound here: reads below see this binding, not an earlier one
            live |= set(_loads(stmt))
            if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
                live.add(stmt.target.id)
        if not dead:
            return total
        total += len(dead)
        body[:] = [s for i, s in enumerate(body) if i not in dead]


def _stores(node: ast.AST) -> set[str]:
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    for n in ast.walk(node):
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(n.name)
        elif isinstance(n, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in n.names}
    return names


def _single_use(body: list[ast.stmt], i: int, name: str) -> int | None:
    """Index of the one top-level statement after ``body[i]`` that reads ``name`` (the binding made
    at ``i``), when there is exactly one read of it and nothing rebinds ``name`` before it."""
    use, reads = None, 0
    for j in range(i + 1, len(body)):
        stmt = body[j]
        n = _loads(stmt)[name]
        if n:
            reads += n
            use = j
        if reads > 1:
            return None
        if name in _stores(stmt):
            break
    return use if reads == 1 else None


def _collapse_aliases(body: list[ast.stmt], changed: set[int]) -> int:
    """``a = b`` (a name bound to another name) and one read of ``a`` after it, in a statement
    that runs once, with ``b`` not rebound in between: the read becomes ``b`` and the alias goes
    (``answer = total`` / ``print(answer)`` becomes ``print(total)``)."""
    nested = _nested_loads(body)
    count = 0
    i = 0
    while i < len(body):
        stmt = body[i]
        names = _targets(stmt)
        if (names is None or len(names) != 1 or not isinstance(stmt, ast.Assign) or names[0] in nested
                or not isinstance(stmt.value, ast.Name) or stmt.value.id == names[0]):
            i += 1
            continue
        name, value = names[0], stmt.value
        use = _single_use(body, i, name)
        if use is None or not isinstance(body[use], _SIMPLE) or value.id in set().union(
                *(_stores(s) for s in body[i + 1: use])):
            i += 1
            continue
        body[use] = SubstituteName(name, value).visit(body[use])
        changed.add(id(body[use]))
        del body[i]
        count += 1
    return count
