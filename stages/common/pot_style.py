"""Style rewrites of PoT programs: the same computation, written shorter or longer.

``inline_single_use`` substitutes a variable that is assigned once and read once into the place
that reads it (``won = 16`` / ``cards = cards + won`` becomes ``cards = cards + 16``), repeatedly.
The synth stage uses it (``concise_fraction``) to give the training data a spread of lengths for
one computation, which a length-aware RL stage can then move along and a DPO stage can pair
(concise chosen, verbose rejected). A rewrite is verified in the sandbox like any other program.

``add_step_comments`` writes a comment line before every statement and ``add_explanation`` a
comment line after the program; the synth stage's ``verbose_fraction`` uses them.

``apply_style`` writes a program in a chat teacher's style, features joined by ``+`` (comments
before the statements that compute, intermediate prints, an ``answer`` variable, inlining, no
``assert`` checks, a labelled answer, an explanation; see ``FEATURES``), and ``pick_style`` draws one
style per problem from a mix: the synth stage's ``style_mix``, which the tiny recipe uses
(recipes/tiny/synth.yaml says which mix and why). Every rewrite keeps the answer the program prints,
on the last line of its output (``label`` prints it after ``Answer:``, which the answer reader takes).

Only straight-line, top-level code is inlined: a program with a loop, a function, a ``global``,
``del``, augmented assignments to the variable or a read inside a nested scope keeps the variable.
"""

from __future__ import annotations

import ast
import hashlib

from stages.common.pot import extract_program, format_completion

_SIMPLE = (ast.Assign, ast.Expr, ast.Assert, ast.Import, ast.ImportFrom)


def _reads(node: ast.AST, name: str) -> int:
    return sum(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load) for n in ast.walk(node))


def _assigned_name(stmt: ast.stmt) -> str | None:
    """The name of ``name = value``; None for any other statement."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id
    return None


def _assigns(stmt: ast.stmt, name: str) -> bool:
    return isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets)


class SubstituteName(ast.NodeTransformer):
    """Replace every read of the variable ``name`` with the expression ``value`` (inlining a binding)."""

    def __init__(self, name: str, value: ast.expr) -> None:
        self.name, self.value = name, value

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == self.name and isinstance(node.ctx, ast.Load):
            return ast.copy_location(self.value, node)
        return node


def _inline_once(body: list[ast.stmt], literals_only: bool) -> bool:
    """Inline one variable in place; False when none can be."""
    for i, stmt in enumerate(body):
        name = _assigned_name(stmt)
        if name is None:
            continue
        if literals_only and not (isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, int | float)):
            continue
        if _reads(stmt.value, name):
            continue  # x = x + 1 reads an earlier x
        # the reads of this binding: statements after it, up to (and including) the one that rebinds it
        use = None
        count = 0
        for j in range(i + 1, len(body)):
            later = body[j]
            n = _reads(later, name)
            if n:
                count += n
                use = j
            if _assigns(later, name) or count > 1:
                break
        if count != 1 or use is None or not isinstance(body[use], _SIMPLE):
            continue
        # a name the value reads must not be rebound between the definition and the use
        value_names = {n.id for n in ast.walk(stmt.value) if isinstance(n, ast.Name)}
        if any(_assigns(body[k], v) for k in range(i + 1, use) for v in value_names):
            continue
        body[use] = SubstituteName(name, stmt.value).visit(body[use])
        del body[i]
        return True
    return False


def inline_single_use(program: str, *, literals_only: bool = False) -> str | None:
    """The program with single-use variables inlined (``literals_only``: only those bound to a
    number); None when it does not parse, uses control flow at the top level, or nothing changes."""
    try:
        tree = ast.parse(program)
    except SyntaxError:
        return None
    if not all(isinstance(s, _SIMPLE) for s in tree.body):
        return None
    changed = False
    while _inline_once(tree.body, literals_only):
        changed = True
    if not changed:
        return None
    return ast.unparse(tree) + "\n"


def _comment(stmt: ast.stmt) -> str:
    name = _assigned_name(stmt)
    if name is not None:
        name = name.replace("_", " ")
        if isinstance(stmt.value, ast.Constant):
            return f"# the number given for {name}"
        return f"# now work out {name}"
    if isinstance(stmt, ast.Assert):
        return "# make sure that it divides evenly"
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and getattr(stmt.value.func, "id", "") == "print":
        return "# print the final answer"
    return "# next step"


def add_step_comments(program: str) -> str | None:
    """The program with a comment line before every top-level statement (the verbose style of
    many teachers); None when it does not parse. The code itself is unchanged."""
    try:
        tree = ast.parse(program)
    except SyntaxError:
        return None
    lines = program.splitlines()
    out: list[str] = []
    for stmt in tree.body:
        if stmt.col_offset:
            return None
        out.append(_comment(stmt))
        out.extend(lines[stmt.lineno - 1 : stmt.end_lineno])
    return "\n".join(out) + "\n" if tree.body else None


EXPLANATIONS = (
    "The program applies each change in the order of the problem and prints the answer.",
    "Each line turns one sentence into arithmetic, and the last line prints the answer.",
    "We write down the numbers, combine them step by step and print the result.",
)


def add_explanation(program: str, key: str = "") -> str | None:
    """The program followed by a comment line that explains it (the verbose style of many
    teachers: the code, then what it does); one of ``EXPLANATIONS``, chosen by ``key``. None when
    the program does not parse. The code itself is unchanged."""
    try:
        ast.parse(program)
    except SyntaxError:
        return None
    text = EXPLANATIONS[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(EXPLANATIONS)]
    return program.rstrip("\n") + f"\n# {text}\n"


def chosen_for_rewrite(problem_id: str, fraction: float, seed: int = 0) -> bool:
    """A stable, seeded draw per problem: whether its solutions get a style rewrite."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


# ---------------------------------------------------------------------------------------------
# A chat teacher's styles: composable features, one style per problem drawn from a mix.
#
# A style is ``plain`` (the program as the teacher wrote it) or features joined by ``+``, applied
# in this order whatever order they are written in:
#   inline       single-use variables bound to a number inlined (``inline_single_use``), shorter;
#   no_asserts   the program's ``assert`` statements left out (the divisibility checks of the task's
#                reference programs, which chat teachers rarely write); a program with none is unchanged;
#   fold         the answer printed as the expression that computes it: ``x = a + b`` / ``print(x)``
#                becomes ``print(a + b)`` (shorter; every number the problem gives keeps its named
#                assignment, unlike ``inline``);
#   answer_var   the final ``print(x)`` becomes ``answer = x`` / ``print(answer)`` (a redundant
#                assignment: nothing but the print reads it);
#   prints       ``print('<name>:', <name>)`` after every computed assignment before the final print
#                (intermediate prints; the answer is still the last line printed);
#   label        the final ``print(x)`` prints the answer after a label, ``print('Answer:', x)`` (the
#                sandbox returns that last line, and rewards/extract.py reads the value after ``Answer:``);
#   comments     a comment line right before every statement that computes (after the givens it
#                reads) and before the final answer, saying what it does;
#   explanation  a comment line after the program (``add_explanation``).
# Every feature is an AST rewrite of straight-line top-level code; a program it cannot rewrite
# (control flow, no final print, a name it would shadow) gives None and is kept as it was.

FEATURES = ("inline", "no_asserts", "fold", "answer_var", "prints", "label", "comments", "explanation")
PLAIN = "plain"
ANSWER_NAME = "answer"
ANSWER_LABEL = "Answer:"


def style_features(style: str) -> tuple[str, ...]:
    """The features of ``style`` in the order they are applied; ValueError for an unknown one."""
    if style == PLAIN:
        return ()
    parts = [p.strip() for p in style.split("+")]
    unknown = [p for p in parts if p not in FEATURES]
    if unknown or not parts:
        raise ValueError(f"unknown style feature(s) {unknown} in {style!r}; a style is '{PLAIN}' or features "
                         f"joined by '+' from {', '.join(FEATURES)}")
    return tuple(f for f in FEATURES if f in parts)


def parse_style_mix(mix: dict | str) -> list[tuple[str, float]]:
    """``{style: share}`` (or ``"style=share,style=share"``) as a checked list; the shares must be
    non-negative and sum to 1 (within 1e-6)."""
    if isinstance(mix, str):
        pairs = {}
        for part in filter(None, (p.strip() for p in mix.split(","))):
            style, sep, share = part.partition("=")
            if not sep:
                raise ValueError(f"style mix entry {part!r} is not style=share")
            pairs[style.strip()] = share
        mix = pairs
    if not isinstance(mix, dict) or not mix:
        raise ValueError(f"a style mix is a non-empty mapping of style to share, got {mix!r}")
    out = []
    for style, share in mix.items():
        style_features(str(style))
        try:
            value = float(share)
        except (TypeError, ValueError) as e:
            raise ValueError(f"share of style {style!r} is not a number: {share!r}") from e
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"share of style {style!r} must be in [0, 1], got {value}")
        out.append((str(style), value))
    total = sum(v for _, v in out)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"style shares must sum to 1, got {total:g} ({dict(out)})")
    return out


def pick_style(problem_id: str, mix: list[tuple[str, float]], seed: int = 0) -> str:
    """A stable, seeded draw per problem from a parsed mix: every solution of a problem gets the
    same style, and a problem keeps its style when other problems are added or removed."""
    digest = hashlib.sha256(f"style:{seed}:{problem_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    acc = 0.0
    for style, share in mix:
        acc += share
        if u < acc:
            return style
    return next(style for style, share in reversed(mix) if share > 0)


def _is_print(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "print")


def _is_given(stmt: ast.stmt) -> bool:
    """``name = <number>``: a quantity copied from the problem."""
    return (_assigned_name(stmt) is not None and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, int | float) and not isinstance(stmt.value.value, bool))


def _is_alias(stmt: ast.stmt) -> bool:
    """``name = other_name``: a redundant assignment."""
    return _assigned_name(stmt) is not None and isinstance(stmt.value, ast.Name)


def _names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def _words(name: str) -> str:
    return name.replace("_", " ")


def _final_print(body: list[ast.stmt]) -> ast.Call | None:
    """The last statement's ``print(<one argument>)`` call, or None."""
    if not body or not _is_print(body[-1]):
        return None
    call = body[-1].value
    if len(call.args) != 1 or call.keywords or isinstance(call.args[0], ast.Starred):
        return None
    return call


def _add_answer_var(body: list[ast.stmt]) -> bool:
    call = _final_print(body)
    if call is None or ANSWER_NAME in _names(ast.Module(body=body, type_ignores=[])):
        return False
    body[-1:] = [ast.Assign(targets=[ast.Name(ANSWER_NAME, ast.Store())], value=call.args[0], lineno=0),
                 ast.Expr(ast.Call(ast.Name("print", ast.Load()), [ast.Name(ANSWER_NAME, ast.Load())], []))]
    return True


def _drop_asserts(body: list[ast.stmt]) -> bool:
    """Leave out every top-level ``assert`` (a check that prints nothing); a program without one is
    not a failure of the style: True whatever is left out."""
    body[:] = [stmt for stmt in body if not isinstance(stmt, ast.Assert)]
    return True


def _fold_answer(body: list[ast.stmt]) -> bool:
    """``x = <computation>`` / ``print(x)`` at the end becomes ``print(<computation>)`` (nothing else
    reads that ``x``: the print is the last statement); a given (``x = <number>``) or an alias stays."""
    call = _final_print(body)
    if call is None or len(body) < 2 or not isinstance(call.args[0], ast.Name):
        return False
    name, prev = call.args[0].id, body[-2]
    if _assigned_name(prev) != name or _is_given(prev) or _is_alias(prev):
        return False
    call.args[0] = prev.value
    del body[-2]
    return True


def _add_prints(body: list[ast.stmt]) -> bool:
    if _final_print(body) is None:
        return False
    out: list[ast.stmt] = []
    added = False
    for stmt in body[:-1]:
        out.append(stmt)
        name = _assigned_name(stmt)
        if name is not None and name != ANSWER_NAME and not _is_given(stmt) and not _is_alias(stmt):
            out.append(ast.Expr(ast.Call(ast.Name("print", ast.Load()),
                                         [ast.Constant(f"{_words(name)}:"), ast.Name(name, ast.Load())], [])))
            added = True
    body[:] = out + body[-1:]
    return added


def _label_answer(body: list[ast.stmt]) -> bool:
    """The final ``print(x)`` prints the answer with a label: ``print('Answer:', x)`` (rewards/extract.py
    reads the value after ``Answer:`` on the last line the sandbox returns)."""
    call = _final_print(body)
    if call is None:
        return False
    call.args[:0] = [ast.Constant(ANSWER_LABEL)]
    return True


_OP_WORDS = {ast.Add: "plus", ast.Sub: "minus", ast.Mult: "times", ast.FloorDiv: "divided by",
             ast.Div: "divided by", ast.Mod: "modulo"}


def _operand(node: ast.expr) -> str:
    return _words(node.id) if isinstance(node, ast.Name) else ast.unparse(node)


def _step_comment(stmt: ast.stmt, final: bool) -> str:
    """What one step does, from the statement that computes it."""
    if final or _is_print(stmt):
        return "# print the final answer"
    name = _assigned_name(stmt)
    value = getattr(stmt, "value", None)
    if name is not None and isinstance(value, ast.BinOp) and type(value.op) in _OP_WORDS:
        left, right = value.left, value.right
        if isinstance(left, ast.Name) and left.id == name and isinstance(value.op, ast.Add):
            return f"# add {_operand(right)} to {_words(name)}"
        if isinstance(left, ast.Name) and left.id == name and isinstance(value.op, ast.Sub):
            return f"# take {_operand(right)} away from {_words(name)}"
        return f"# {_words(name)} is {_operand(left)} {_OP_WORDS[type(value.op)]} {_operand(right)}"
    if name is not None:
        return f"# work out {_words(name)}"
    return "# next step"


def _comment_lines(program: str) -> str | None:
    """The program with a comment line right before every statement that computes (an assignment
    of anything but a number or a name) and before the final answer (its alias and print), saying
    what it does. The givens a step reads come before its comment, as a teacher writes them down
    and then says what it does with them; the code itself is unchanged."""
    tree = ast.parse(program)
    body = tree.body
    if not body or any(s.col_offset for s in body):
        return None
    lines = program.splitlines()
    final_at = len(body) - 1 if _is_print(body[-1]) else None
    if final_at is not None:  # the answer's alias goes with the final print
        while final_at > 0 and _is_alias(body[final_at - 1]):
            final_at -= 1
    out: list[str] = []
    for i, stmt in enumerate(body):
        if i == final_at:
            out.append("# print the final answer")
        elif final_at is None or i < final_at:
            if _assigned_name(stmt) is not None and not _is_given(stmt) and not _is_alias(stmt):
                out.append(_step_comment(stmt, final=False))
        out.extend(lines[stmt.lineno - 1 : stmt.end_lineno])
    return "\n".join(out) + "\n"


# the features that rewrite the AST, in FEATURES order; each returns False when it cannot apply
_REWRITES = {"no_asserts": _drop_asserts, "fold": _fold_answer, "answer_var": _add_answer_var, "prints": _add_prints,
             "label": _label_answer}


def apply_style(program: str, style: str, key: str = "") -> str | None:
    """``program`` rewritten in ``style`` (see ``FEATURES``); ``key`` picks the explanation's
    wording. None when the program does not parse, is not straight-line top-level code, or a
    feature of the style cannot be applied (the caller keeps the original)."""
    features = style_features(style)
    if not features:
        return program
    try:
        tree = ast.parse(program)
    except SyntaxError:
        return None
    if not all(isinstance(s, _SIMPLE) for s in tree.body):
        return None
    code = program
    if "inline" in features:
        code = inline_single_use(code, literals_only=True)
        if code is None:
            return None
        tree = ast.parse(code)
    transforms = [f for f in _REWRITES if f in features]
    for feature in transforms:
        if not _REWRITES[feature](tree.body):
            return None
    if transforms:
        code = ast.unparse(ast.fix_missing_locations(tree)) + "\n"
    if "comments" in features:
        code = _comment_lines(code)
        if code is None:
            return None
    if "explanation" in features:
        code = add_explanation(code, key)
    return code if code.endswith("\n") else code + "\n"


def restyle_candidates(candidates: list, mix: dict | list[tuple[str, float]], seed: int = 0) -> dict[str, int]:
    """Rewrite teacher candidates (objects with ``problem_id`` and ``completion``, a PoT completion
    or None) in place, each in its problem's style drawn from ``mix``; the number rewritten per
    style (a program a style cannot rewrite keeps its code and is counted as ``unchanged``)."""
    styles = parse_style_mix(mix) if isinstance(mix, dict) else list(mix)
    done = {style: 0 for style, share in styles if share > 0}
    done["unchanged"] = 0
    for c in candidates:
        if c.completion is None:
            continue
        style = pick_style(c.problem_id, styles, seed)
        program = extract_program(c.completion)
        new = apply_style(program, style, c.problem_id) if program else None
        if new is None:
            done["unchanged"] += 1
            continue
        c.completion = format_completion(new)
        done[style] += 1
    return done
