"""Where DPO's pairs come from: the solutions and pair files of ``train_data``.

A source is
- a checkpoint folder (``@synth``, ``@evolve``, ``@revise``, or any stage folder or version): its
  ``pairs.jsonl`` (pair rows, kind ``revised`` unless a row names its own), ``verified.jsonl``
  (Verified solutions) and ``discarded.jsonl`` (evolve's samples that were not kept, right and
  wrong), whichever it has;
- a jsonl file: pair rows when its first row has ``chosen`` and ``rejected``, else Verified
  solutions.

Every row is validated; a bad one is an error naming file, line and field.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from stages.common.checkpoint import CheckpointError, resolve_parent
from stages.common.data import DataFormatError, iter_jsonl, read_jsonl, validate_row

log = logging.getLogger("mathforge.dpo")

PAIR_SCHEMA = {
    "question": ((str,), True),
    "chosen": ((str,), True),
    "rejected": ((str,), True),
    "kind": ((str,), False),
    "id": ((str,), False),
    "answer": ((str, type(None)), False),
    "chosen_tokens": ((int,), False),
    "rejected_tokens": ((int,), False),
}
SOLUTION_FILES = ("verified.jsonl", "discarded.jsonl")


@dataclass
class SourceData:
    """What the sources hold: Verified solutions and pair rows (each tagged with its file in
    ``source``), the files read, and the sources left out (a missing optional stage)."""

    solutions: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def read_pairs(path: Path, default_kind: str) -> list[dict]:
    rows = []
    for lineno, row in iter_jsonl(path):
        row = validate_row(row, PAIR_SCHEMA, path, lineno)
        kind = row.get("kind") or default_kind
        if not kind.strip():
            raise DataFormatError(path, lineno, "kind", "is empty")
        rows.append({**row, "kind": kind, "source": str(path)})
    return rows


def read_solutions(path: Path) -> list[dict]:
    return [{**row, "pair_source": str(path)} for row in read_jsonl(path, "verified")]


def _is_pair_file(path: Path) -> bool:
    for _, row in iter_jsonl(path):
        return isinstance(row, dict) and "chosen" in row and "rejected" in row
    return False


def read_sources(sources: list[str], run_dir: Path, *, required: bool = True) -> SourceData:
    """Read every source (see the module docstring). With ``required`` false, a source that is a
    stage folder of this run with no checkpoint yet (``@revise`` before revise ran) is left out
    with a warning; anything else missing is an error."""
    data = SourceData()
    for src in sources:
        if src.lower() == "none":  # the policy's own samples only (sample_problems)
            continue
        p = Path(src)
        if p.is_file():
            if _is_pair_file(p):
                data.pairs += read_pairs(p, default_kind="file")
            else:
                data.solutions += read_solutions(p)
            data.files.append(str(p))
            continue
        in_run = p.parent.resolve() == Path(run_dir).resolve()
        if not p.exists():
            if in_run and not required:
                log.warning("dpo source %s: this run has no %s checkpoint yet; left out", src, p.name)
                data.skipped.append(src)
                continue
            raise DataFormatError(src, None, None, "does not exist (expected a checkpoint folder such as @synth, "
                                                   "@evolve or @revise, or a jsonl file)")
        try:
            folder = Path(resolve_parent(src).path)
        except CheckpointError as e:
            if in_run and not required:
                log.warning("dpo source %s: %s; left out", src, e)
                data.skipped.append(src)
                continue
            raise
        found = False
        if (folder / "pairs.jsonl").is_file():
            data.pairs += read_pairs(folder / "pairs.jsonl", default_kind="revised")
            data.files.append(str(folder / "pairs.jsonl"))
            found = True
        for name in SOLUTION_FILES:
            if (folder / name).is_file():
                data.solutions += read_solutions(folder / name)
                data.files.append(str(folder / name))
                found = True
        if not found:
            raise DataFormatError(src, None, None, "is a checkpoint without pairs.jsonl, verified.jsonl or "
                                                   "discarded.jsonl (nothing to build preference pairs from)")
    return data
