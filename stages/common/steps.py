"""Step splitting shared by the PRM stage, the PRM bonus in rewards/ and every PRM consumer.

A PoT program's steps are its top-level statements (a statement may span several lines, such as
a ``for`` loop with its body); a CoT solution's steps are its non-empty lines. Training and
scoring must split identically, so nothing else splits solutions.
"""

from __future__ import annotations

import ast

from stages.common.pot import extract_program


def split_program(code: str) -> list[str]:
    """Top-level statements of a program, each with its own source lines: the comment lines
    right above a statement go with it, other comments and blank lines stay with the statement
    before them. Code that does not parse falls back to lines."""
    lines = code.splitlines()
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return [ln for ln in lines if ln.strip()]
    if not tree.body:
        return []
    def first_line(node: ast.stmt) -> int:  # decorators belong to the statement they decorate
        return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1

    def block_start(node: ast.stmt) -> int:  # the comment lines right above a statement describe it
        k = first_line(node)
        while k > 0 and lines[k - 1].lstrip().startswith("#"):
            k -= 1
        return k

    steps = []
    start = 0
    for i in range(len(tree.body)):
        end = max(block_start(tree.body[i + 1]), tree.body[i].end_lineno) if i + 1 < len(tree.body) else len(lines)
        chunk = "\n".join(lines[start:end]).strip("\n")
        if chunk.strip():
            steps.append(chunk)
        start = end
    return steps


def split_cot(text: str) -> list[str]:
    """Lines of a chain-of-thought solution that hold text."""
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def split_solution(completion: str) -> list[str]:
    """Steps of a solution: a PoT completion's program statements, else its CoT lines."""
    code = extract_program(completion)
    if code is not None:
        return split_program(code)
    return split_cot(completion)
