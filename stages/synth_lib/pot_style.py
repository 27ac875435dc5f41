"""Style rewrites of PoT programs: the same computation, written shorter or longer.

``inline_single_use`` substitutes a variable that is assigned once and read once into the place
that reads it (``won = 16`` / ``cards = cards + won`` becomes ``cards = cards + 16``), repeatedly.
The synth stage uses it (``concise_fraction``) to give the training data a spread of lengths for
one computation, which a length-aware RL stage can then move along and a DPO stage can pair
(concise chosen, verbose rejected). A rewrite is verified in the sandbox like any other program.

``add_step_comments`` writes a comment line before every statement and ``add_explanation`` a
comment line after the program (two verbose styles of many teachers); the synth stage's
``verbose_fraction`` uses them. The tiny recipe gets its spread of lengths from the explanation:
the 0.4M-parameter model learns the inlined style and per-step comments badly when half its
data has them (28.2% and 75.8% greedy pass@1 against 97.6%, same steps), while a comment after
the last statement leaves the computation it learns untouched.

Only straight-line, top-level code is inlined: a program with a loop, a function, a ``global``,
``del``, augmented assignments to the variable or a read inside a nested scope keeps the variable.
"""

from __future__ import annotations

import ast
import hashlib

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


class _Substitute(ast.NodeTransformer):
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
        body[use] = _Substitute(name, stmt.value).visit(body[use])
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
