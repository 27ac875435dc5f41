"""The keep filter of the evolve stage: which of a problem's sampled solutions become training data.

A solution passes when the sandbox says it is correct **and** its PRM score (the per-step scores
aggregated by min, product or last) is above the threshold. Passing solutions are deduplicated by
their normalized program (:func:`stages.common.pot.program_key`), also against what earlier rounds
kept, and at most ``k`` are kept per problem, preferring the higher PRM score, then the shorter
completion. Every solution that is not kept gets exactly one reason, checked in this order:
``no_program``, ``wrong`` (``correct`` is False), ``unjudged`` (``correct`` is None: a gold or an
answer that could not be read, never counted as right or wrong), ``low_prm``, ``duplicate``,
``over_k``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rewards.functions import AGGREGATIONS
from stages.common.pot import extract_program, program_key

REASONS = ("no_program", "wrong", "unjudged", "low_prm", "duplicate", "over_k")


def aggregate(scores: Sequence[float] | None, aggregation: str) -> float | None:
    """The solution's PRM score: its step scores aggregated (None for a solution without steps)."""
    if not scores:
        return None
    return float(AGGREGATIONS[aggregation](scores))


def rejection(row: dict, threshold: float) -> str | None:
    """Why ``row`` (with ``completion``, ``correct`` and its aggregate ``prm_score``) cannot be kept
    whatever the other solutions are; None when it passes the filter."""
    if extract_program(row["completion"]) is None:
        return "no_program"
    if row["correct"] is False:
        return "wrong"
    if row["correct"] is not True:
        return "unjudged"
    if row.get("prm_score") is None or row["prm_score"] <= threshold:
        return "low_prm"
    return None


def passes(row: dict, threshold: float) -> bool:
    return rejection(row, threshold) is None


def preference(row: dict) -> tuple:
    """Sort key among passing solutions: higher PRM score first, then fewer tokens, then the
    order they were generated in (stable and deterministic)."""
    return (-row["prm_score"], row["n_tokens"], row.get("sample", 0))


def select(rows: Sequence[dict], *, threshold: float, k: int,
           kept_before: Iterable[str] = ()) -> tuple[list[dict], list[dict]]:
    """Split one problem's solutions into (kept, discarded); every discarded row gets ``reason``.
    ``kept_before``: program keys that earlier rounds kept for this problem (their copies are
    duplicates)."""
    seen = set(kept_before)
    kept: list[dict] = []
    discarded: list[dict] = []
    candidates = []
    for row in rows:
        reason = rejection(row, threshold)
        if reason is None:
            candidates.append(row)
        else:
            discarded.append({**row, "reason": reason})
    for row in sorted(candidates, key=preference):
        key = program_key(extract_program(row["completion"]))
        if key in seen:
            discarded.append({**row, "reason": "duplicate"})
        elif len(kept) >= k:
            seen.add(key)
            discarded.append({**row, "reason": "over_k"})
        else:
            seen.add(key)
            kept.append(row)
    return kept, discarded


def kept_keys(rows: Iterable[dict]) -> dict[str, set[str]]:
    """Program keys of kept rows, per problem id (what later rounds deduplicate against)."""
    out: dict[str, set[str]] = {}
    for row in rows:
        out.setdefault(row["id"], set()).add(program_key(extract_program(row["completion"])))
    return out

