"""What the revise stage reads and writes.

Inputs: solutions to revise, from jsonl files (``question``, ``answer``, ``completion``, optional
``id``) or from a checkpoint that writes ``discarded.jsonl`` (the evolve stage: its samples that
were not kept, with a ``reason``); the stage also samples its own from problem sources.

Outputs (in the checkpoint): ``revised.jsonl`` (every item: the original, each round, the final
version, each judged by the gold), ``verified.jsonl`` (repaired solutions in the Verified-solution
format, ``source: revise``), ``pairs.jsonl`` (wrong original -> repaired, for dpo) and
``train_rows.jsonl`` (what the policy was fine-tuned on: repaired solutions and revision
demonstrations).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.common.checkpoint import CheckpointError, resolve_parent
from stages.common.data import DataFormatError, Schema, iter_jsonl, validate_row

SOLUTION: Schema = {"question": ((str,), True), "answer": ((str,), True), "completion": ((str,), True),
                    "id": ((str,), False)}
DISCARDED = "discarded.jsonl"
# evolve's discard reasons worth revising: wrong answers, low PRM scores, no program; its duplicates
# and over-k samples are correct solutions it had enough of
REVISABLE_REASONS = ("wrong", "low_prm", "no_program")


def solution_file(source: str) -> Path:
    """The jsonl a solution source reads: a file as it is, a checkpoint's ``discarded.jsonl``."""
    path = Path(source)
    if path.is_dir():
        try:
            parent = resolve_parent(str(path))
        except CheckpointError as e:
            raise DataFormatError(source, None, None, f"is not a usable checkpoint: {e}") from e
        found = Path(parent.path) / DISCARDED
        if not found.is_file():
            raise DataFormatError(source, None, None, f"is a checkpoint without {DISCARDED} (expected the evolve "
                                                      "stage's output, or a jsonl of solutions)")
        return found
    if not path.is_file():
        raise DataFormatError(source, None, None, "does not exist (expected a jsonl of solutions with question, "
                                                  "answer and completion, or a checkpoint with discarded.jsonl)")
    return path


def read_solutions(source: str) -> tuple[list[dict], dict[str, int]]:
    """Solutions to revise from ``source`` and what was left out: rows of a ``discarded.jsonl``
    whose ``reason`` is not worth revising (duplicates, over-k) are counted, not returned. Every
    row is validated (a bad row names file, line and field)."""
    path = solution_file(source)
    rows, skipped = [], {}
    for lineno, row in iter_jsonl(path):
        validate_row(row, SOLUTION, path, lineno)
        reason = row.get("reason")
        if path.name == DISCARDED and reason not in REVISABLE_REASONS:
            skipped[str(reason)] = skipped.get(str(reason), 0) + 1
            continue
        rows.append({"id": row.get("id") or f"{path.stem}-{lineno}", "question": row["question"],
                     "answer": row["answer"], "completion": row["completion"], "source": str(source),
                     "line": lineno})
    return rows, skipped


def verified_row(item: dict, completion: str, executed_answer: str | None, n_tokens: int, rounds: int) -> dict:
    """A repaired solution in the Verified-solution format (``source: revise``)."""
    return {"id": item["id"], "question": item["question"], "answer": item["answer"], "completion": completion,
            "executed_answer": executed_answer, "correct": True, "source": "revise", "n_tokens": n_tokens,
            "rounds": rounds, "original": item["original"]}


def pair_row(item: dict, chosen: str, chosen_tokens: int, rejected_tokens: int) -> dict:
    """A preference pair for dpo: the repaired solution against the wrong original."""
    return {"id": item["id"], "question": item["question"], "answer": item["answer"], "chosen": chosen,
            "rejected": item["original"], "kind": "revised", "chosen_tokens": chosen_tokens,
            "rejected_tokens": rejected_tokens}


def dedupe(items: Sequence[dict], key_of: Any) -> tuple[list[dict], int]:
    """Items with distinct ``key_of(item)`` (the first kept) and how many were dropped."""
    seen: set = set()
    out = []
    for it in items:
        k = key_of(it)
        if k in seen:
            continue
        seen.add(k)
        out.append(it)
    return out, len(items) - len(out)
