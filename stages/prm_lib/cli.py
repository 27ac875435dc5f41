"""Scoring for people: ``python -m stages.prm score IN.jsonl -o OUT.jsonl [--checkpoint DIR]`` (each
step's P(correct) and their aggregates) and ``python -m stages.prm predict IN.jsonl -o OUT.jsonl``
(each step's predicted class with its class probabilities)."""

from __future__ import annotations

import argparse
import math

from stages.common.data import DataFormatError, iter_jsonl, write_jsonl
from stages.common.steps import split_solution
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
    scorer = PRMScorer(PRMScorer.check(a.checkpoint), batch_size=a.batch_size)
    scores = scorer.score([r.get("question", r.get("prompt")) for r in rows], [r["completion"] for r in rows])
    out = [{**r, "step_scores": s, "prm_min": min(s) if s else None, "prm_product": math.prod(s) if s else None,
            "prm_last": s[-1] if s else None} for r, s in zip(rows, scores, strict=True)]
    write_jsonl(a.output, out)
    print(f"scored {len(out)} solutions -> {a.output}")
    return 0


def _predict_input(path: str) -> tuple[list[dict], list[str], list[list[str]]]:
    rows, questions, steps = [], [], []
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataFormatError(path, lineno, None, "expected a JSON object")
        q = row.get("question", row.get("prompt", row.get("input", "")))
        if not isinstance(q, str):
            raise DataFormatError(path, lineno, "question", "is not a string")
        given = row.get("steps", row.get("completions", row.get("value")))
        if isinstance(given, list) and all(isinstance(s, str) for s in given):
            split = list(given)
        elif isinstance(row.get("completion"), str):
            split = split_solution(row["completion"])
        elif isinstance(row.get("text"), str):
            split = [row["text"]]  # one step on its own (BMUq's predict(texts))
        else:
            raise DataFormatError(path, lineno, "completion", "is missing: give completion (a solution), steps (a "
                                  "list of step texts) or text (one step)")
        rows.append(row)
        questions.append(q)
        steps.append(split)
    return rows, questions, steps


def predict_command(argv: list[str]) -> int:
    """``python -m stages.prm predict IN.jsonl -o OUT.jsonl [--checkpoint DIR] [--batch_size N]``:
    each step's predicted class (negative / neutral / positive with three labels, else wrong /
    correct) with its class probabilities and score, for rows with ``question`` (or ``prompt``)
    and ``completion`` (a solution, split as in training), ``steps`` (step texts) or ``text``
    (one step). Adds ``predictions``: ``[{"step", "label", "probabilities", "score"}]``."""
    ap = argparse.ArgumentParser(prog="python -m stages.prm predict", description=predict_command.__doc__)
    ap.add_argument("input")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--checkpoint", default="runs/default/prm", help="PRM checkpoint (stage folder or vN)")
    ap.add_argument("--batch_size", type=int, default=16)
    a = ap.parse_args(argv)
    rows, questions, steps = _predict_input(a.input)
    scorer = PRMScorer(PRMScorer.check(a.checkpoint), batch_size=a.batch_size)
    predictions = scorer.predict_steps(questions, steps)
    out = [{**r, "predictions": [{"step": s, **p} for s, p in zip(ss, preds, strict=True)]}
           for r, ss, preds in zip(rows, steps, predictions, strict=True)]
    write_jsonl(a.output, out)
    counts: dict[str, int] = {}
    for preds in predictions:
        for p in preds:
            counts[p["label"]] = counts.get(p["label"], 0) + 1
    print(f"predicted {sum(counts.values())} steps of {len(out)} rows -> {a.output} "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})")
    return 0
