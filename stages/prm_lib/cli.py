"""Scoring for people: ``python -m stages.prm score IN.jsonl -o OUT.jsonl [--checkpoint DIR]``."""

from __future__ import annotations

import argparse
import math

from stages.common.data import DataFormatError, iter_jsonl, write_jsonl
from stages.prm_lib.scorer import PRMScorer


def score_command(argv: list[str]) -> int:
    """``python -m stages.prm score IN.jsonl -o OUT.jsonl [--checkpoint DIR] [--batch_size N]``: adds
    ``step_scores`` (and their min, product and last) to rows with ``question`` (or ``prompt``) and
    ``completion``."""
    ap = argparse.ArgumentParser(prog="python -m stages.prm score", description=score_command.__doc__)
    ap.add_argument("input")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--checkpoint", default="runs/default/prm", help="PRM checkpoint (stage folder or vN)")
    ap.add_argument("--batch_size", type=int, default=16)
    a = ap.parse_args(argv)
    rows = []
    for lineno, row in iter_jsonl(a.input):
        q = row.get("question", row.get("prompt")) if isinstance(row, dict) else None
        if not isinstance(q, str):
            raise DataFormatError(a.input, lineno, "question", "is missing (or prompt) or not a string")
        if not isinstance(row.get("completion"), str):
            raise DataFormatError(a.input, lineno, "completion", "is missing or not a string")
        rows.append(row)
    scorer = PRMScorer(a.checkpoint, batch_size=a.batch_size)
    scores = scorer.score([r.get("question", r.get("prompt")) for r in rows], [r["completion"] for r in rows])
    out = [{**r, "step_scores": s, "prm_min": min(s) if s else None, "prm_product": math.prod(s) if s else None,
            "prm_last": s[-1] if s else None} for r, s in zip(rows, scores, strict=True)]
    write_jsonl(a.output, out)
    print(f"scored {len(out)} solutions -> {a.output}")
    return 0
