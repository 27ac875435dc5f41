"""The Program-of-Thought prompt and answer format, defined once for every stage and for eval.

A PoT completion is one fenced ```python block. The program prints the final answer as the
last line of its output; ``assert`` lines may check intermediate facts. Everything that builds a
prompt or reads a program out of a completion goes through this module.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Sequence

SYSTEM_PROMPT = (
    "Solve the math problem by writing a Python program in one ```python block. "
    "The program must print the final answer on its last line."
)

_FENCE_RE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CLOSED_FENCE_RE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def build_messages(
    question: str,
    few_shot: Sequence[tuple[str, str]] = (),
    system_prompt: str | None = SYSTEM_PROMPT,
) -> list[dict[str, str]]:
    """Chat messages asking for a PoT solution; ``few_shot`` is (question, completion) pairs."""
    messages: list[dict[str, str]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    for q, completion in few_shot:
        messages.append({"role": "user", "content": q})
        messages.append({"role": "assistant", "content": completion})
    messages.append({"role": "user", "content": question})
    return messages


def format_completion(code: str) -> str:
    """Wrap a program as a PoT completion (the assistant message's content)."""
    return f"```python\n{code.strip()}\n```"


def completion_text(completion) -> str:
    """Text of a completion given as a string or as TRL's conversational form."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return completion.get("content", "")
    if isinstance(completion, list):  # [{"role": "assistant", "content": ...}, ...]
        return "".join(m.get("content", "") for m in completion if m.get("role", "assistant") == "assistant")
    raise TypeError(f"unsupported completion type {type(completion).__name__}")


def count_code_blocks(text: str) -> int:
    """Number of closed fenced code blocks in ``text``."""
    return len(_CLOSED_FENCE_RE.findall(text))


def extract_program(completion) -> str | None:
    """The program of a PoT completion: the first ```python block (an unclosed one counts, as
    generation may stop at the closing fence), or None when there is no code block."""
    text = completion_text(completion)
    m = _FENCE_RE.search(text)
    if m is None:
        return None
    code = m.group(1).strip("\n")
    return code if code.strip() else None


class _Canonical(ast.NodeTransformer):
    """Renames variables in order of appearance (v0, v1, ...) and drops docstrings/comments."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id not in self.names and isinstance(node.ctx, ast.Store):
            self.names[node.id] = f"v{len(self.names)}"
        node.id = self.names.get(node.id, node.id)
        return node


@functools.lru_cache(maxsize=1 << 14)  # the revision loop keys every candidate, and candidates repeat
def program_key(code: str) -> str:
    """Near-duplicate key of a program: the same key for programs that differ only in comments,
    spacing, quotes and variable names. Code that does not parse keys on its stripped lines."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return "\n".join(line.strip() for line in code.splitlines() if line.strip() and
                         not line.strip().startswith("#"))
    return ast.dump(_Canonical().visit(tree), annotate_fields=False)
