"""Shallow tree exploration (the seed's "shallow MCTS-like exploration") for the problems whose
best-of-N samples left nothing to keep.

A node is a step prefix of a solution. A sample's prefix is cut before the step to regenerate
(:func:`branch_point`: the first step under the PRM threshold, or the lowest-scored step), so
the node keeps every step before it. Expanding a node samples ``b`` continuations of the prefix
(the assistant turn already holds the kept steps and the policy writes on); each continuation is
run in the sandbox and scored by the PRM. A continuation that passes the keep filter is a
solution; one that does not gives a new, longer prefix (cut the same way). The search repeats on
the best prefixes, at most ``width`` per problem and round of expansion, never from a node of
depth ``depth`` or more, until the problem has ``stop_after`` passing solutions, its frontier is
empty or its token budget (generated tokens) is spent.

Node value: the PRM score of the prefix's last step (a Math-Shepherd-style step score estimates
the chance that the solution so far still ends correct); the empty prefix gets ``root_value``.
Selection is greedy on value (a node is expanded once) or UCT-style, value plus an exploration
bonus ``c * sqrt(ln(1 + expansions of the problem) / (1 + visits of the node))`` (a node may be
expanded again, each time with a smaller bonus).

The search is written against an ``expand`` callback (prefixes -> scored continuations) so that
all problems of a batch advance together: one generation call, one sandbox batch and one PRM
batch per round of expansion.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stages.common.pot import extract_program, program_key
from stages.evolve_lib.keep import passes

SELECTIONS = ("greedy", "uct")
BRANCH_AT = ("first_below", "lowest")
MAX_ROUNDS = 64  # a safety bound on expansion rounds; the token budget ends a search long before


@dataclass(frozen=True)
class TreeOptions:
    branching: int = 4  # b: continuations sampled per expanded prefix
    width: int = 2  # prefixes expanded per problem and round of expansion
    depth: int = 2  # d: a node of this depth is not expanded
    token_budget: int = 1024  # generated tokens per problem
    selection: str = "greedy"  # or "uct"
    uct_c: float = 1.0
    branch_at: str = "first_below"  # or "lowest"
    threshold: float = 0.6  # the keep filter's PRM threshold
    stop_after: int = 1  # distinct passing solutions that end a problem's search

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"tree_selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.branch_at not in BRANCH_AT:
            raise ValueError(f"tree_branch_at must be one of {BRANCH_AT}, got {self.branch_at!r}")
        for name in ("branching", "width", "depth", "stop_after"):
            if getattr(self, name) < 1:
                raise ValueError(f"tree_{name} must be >= 1, got {getattr(self, name)}")
        if self.token_budget < 0 or self.uct_c < 0:
            raise ValueError("tree_token_budget and tree_uct_c must be >= 0")


def branch_point(scores: Sequence[float], threshold: float, mode: str = "first_below", start: int = 0) -> int | None:
    """Index (>= ``start``) of the step to regenerate: the first step scored under ``threshold``
    (``first_below``; when none is, the lowest), or the lowest-scored step (``lowest``; the first
    of equals). None when there is no step at or after ``start``."""
    tail = list(scores[start:])
    if not tail:
        return None
    if mode == "first_below":
        for i, s in enumerate(tail):
            if s < threshold:
                return start + i
    return start + min(range(len(tail)), key=lambda i: (tail[i], i))


@dataclass
class Node:
    steps: tuple[str, ...]  # the prefix: the steps kept as they were
    value: float
    depth: int
    visits: int = 0


def uct_score(node: Node, expansions: int, c: float) -> float:
    return node.value + c * math.sqrt(math.log(1 + expansions) / (1 + node.visits))


@dataclass
class Search:
    """The search of one problem."""

    problem: dict
    est_tokens: float  # expected generated tokens of one continuation (updated as they come)
    frontier: dict[tuple[str, ...], Node] = field(default_factory=dict)
    seen: set[tuple[str, ...]] = field(default_factory=set)
    rows: list[dict] = field(default_factory=list)
    passing: set[str] = field(default_factory=set)  # program keys of passing continuations
    spent: int = 0
    expansions: int = 0
    done: bool = False
    stop_reason: str | None = None

    def add(self, node: Node, max_depth: int) -> None:
        if node.steps in self.seen or node.depth >= max_depth:
            return
        self.seen.add(node.steps)
        self.frontier[node.steps] = node

    def finish(self, reason: str) -> None:
        self.done, self.stop_reason = True, reason


def seed_search(problem: dict, samples: Sequence[dict], opts: TreeOptions) -> Search:
    """A problem's search, its frontier seeded with the prefix of each sample (``steps`` and
    ``prm_scores`` per row) cut before its branch point."""
    with_steps = [r for r in samples if r.get("steps") and r.get("prm_scores")]
    aggregates = [r["prm_score"] for r in with_steps if r.get("prm_score") is not None]
    root_value = sum(aggregates) / len(aggregates) if aggregates else 0.0
    lengths = [r["n_tokens"] for r in samples if r.get("n_tokens")]
    search = Search(problem, est_tokens=max(1.0, sum(lengths) / len(lengths)) if lengths else 64.0)
    for row in with_steps:
        cut = branch_point(row["prm_scores"], opts.threshold, opts.branch_at)
        steps = tuple(row["steps"][:cut])
        search.add(Node(steps, row["prm_scores"][cut - 1] if cut else root_value, 0), opts.depth)
    if not search.frontier:
        search.add(Node((), root_value, 0), opts.depth)
    return search


def select_nodes(search: Search, count: int, opts: TreeOptions) -> list[Node]:
    """The ``count`` nodes to expand next: by value (greedy) or by UCT score; ties keep the
    order the nodes were found in."""
    nodes = list(search.frontier.values())
    if opts.selection == "uct":
        ranked = sorted(range(len(nodes)), key=lambda i: (-uct_score(nodes[i], search.expansions, opts.uct_c), i))
    else:
        ranked = sorted(range(len(nodes)), key=lambda i: (-nodes[i].value, i))
    return [nodes[i] for i in ranked[:count]]


Expand = Callable[[list[tuple[dict, tuple[str, ...]]], int], list[list[dict]]]


def explore(searches: Sequence[Search], expand: Expand, opts: TreeOptions) -> None:
    """Run every search to its end, all problems advancing together. ``expand(requests, b)``
    gets (problem, prefix steps) pairs and returns, for each, ``b`` scored continuations: rows
    with ``completion``, ``correct``, ``steps``, ``prm_scores``, ``prm_score``, ``n_tokens`` and
    ``new_tokens`` (the tokens generated after the prefix). The rows land in ``search.rows``
    with ``origin`` "tree", their ``depth`` and the prefix length they continued (``branch_from``)."""
    for _ in range(MAX_ROUNDS):
        requests: list[tuple[Search, Node]] = []
        for search in searches:
            if search.done:
                continue
            if len(search.passing) >= opts.stop_after:
                search.finish("solved")
                continue
            fit = int((opts.token_budget - search.spent) // (opts.branching * search.est_tokens))
            if fit < 1:
                search.finish("budget")
                continue
            nodes = select_nodes(search, min(opts.width, fit), opts)
            if not nodes:
                search.finish("exhausted")
                continue
            requests += [(search, node) for node in nodes]
        if not requests:
            return
        results = expand([(s.problem, node.steps) for s, node in requests], opts.branching)
        for (search, node), rows in zip(requests, results, strict=True):
            node.visits += 1
            search.expansions += 1
            if opts.selection == "greedy":
                search.frontier.pop(node.steps, None)
            for row in rows:
                row.update(origin="tree", depth=node.depth + 1, branch_from=len(node.steps))
                search.rows.append(row)
                search.spent += row["new_tokens"]
                if passes(row, opts.threshold):
                    search.passing.add(program_key(extract_program(row["completion"])))
                    continue
                steps, scores = row.get("steps") or [], row.get("prm_scores") or []
                start = len(node.steps) if tuple(steps[: len(node.steps)]) == node.steps else 0
                cut = branch_point(scores, opts.threshold, opts.branch_at, start)
                if cut is None or cut <= len(node.steps):  # the first new step is already the bad one
                    continue
                search.add(Node(tuple(steps[:cut]), scores[cut - 1], node.depth + 1), opts.depth)
            generated = [r["new_tokens"] for r in search.rows]
            search.est_tokens = max(1.0, sum(generated) / len(generated)) if generated else search.est_tokens
    for search in searches:
        if not search.done:
            search.finish("rounds")
