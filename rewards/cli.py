"""``python -m rewards check``: check one answer, or a whole jsonl file, the way the rewards do.

One pair::

    python -m rewards check --pred 'The answer is $1,000.' --gold 1000
    -> {"pred_answer": "$1,000", "gold_answer": "1000", "equivalent": true}; exit 0 (1 if not equal)

A file (fields may be dotted paths into nested objects; repeat ``--pred-field`` to check several
solution sets per row, each with its ``--label-field`` to compare with existing labels)::

    python -m rewards check --jsonl data.jsonl --pred-field completion --gold-field answer \\
        [--label-field correct] [--mode cot|answer|pot] [--out results.jsonl]

prints a JSON summary (rows, correct, incorrect, unparseable gold, and with labels the agreement
and the first disagreements); exit 1 when labels were given and any disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from rewards.equivalence import is_equivalent, is_parseable_gold
from rewards.extract import extract_answer, gold_answer
from rewards.scoring import score_pot, warn_unreadable_golds
from stages.common.data import DataFormatError, iter_jsonl, write_jsonl


def _field(row: Any, path: str, file: str, line: int) -> Any:
    value = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataFormatError(file, line, path, "is missing")
        value = value[part]
    return value


def _pred_answer(text: str | None, mode: str) -> str | None:
    if text is None:
        return None
    if mode == "answer":
        return extract_answer(text) or text.strip() or None
    return extract_answer(text)


def check_pair(pred: str, gold: str, mode: str = "cot", timeout_s: float | None = None) -> dict[str, Any]:
    """The verdict on one prediction (a completion, or with mode ``answer`` a bare answer)."""
    g = gold_answer(gold)
    if mode == "pot":
        s = score_pot([pred], [gold])[0]
        return {"pred_answer": s.answer, "gold_answer": g, "status": s.status, "equivalent": s.correct}
    p = _pred_answer(pred, mode)
    if g is None or not is_parseable_gold(g, timeout_s):
        return {"pred_answer": p, "gold_answer": g, "equivalent": None}
    return {"pred_answer": p, "gold_answer": g, "equivalent": is_equivalent(p, g, timeout_s)}


def check_file(
    path: str,
    pred_fields: Sequence[str],
    gold_field: str,
    label_fields: Sequence[str] = (),
    mode: str = "cot",
    limit: int | None = None,
    timeout_s: float | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Judge every prediction of a jsonl file: (summary, one result row per prediction)."""
    if label_fields and len(label_fields) != len(pred_fields):
        raise ValueError(f"{len(label_fields)} --label-field for {len(pred_fields)} --pred-field; give one per pred field")
    items = []  # (line, field, pred text, gold text, label)
    for n, (line, row) in enumerate(iter_jsonl(path)):
        if limit is not None and n >= limit:
            break
        gold = _field(row, gold_field, path, line)
        for k, pf in enumerate(pred_fields):
            label = _field(row, label_fields[k], path, line) if label_fields else None
            if label_fields and not isinstance(label, bool):
                raise DataFormatError(path, line, label_fields[k], f"expected a boolean label, got {label!r:.40}")
            pred = _field(row, pf, path, line)
            if pred is not None and not isinstance(pred, str):
                raise DataFormatError(path, line, pf, f"expected a string, got {type(pred).__name__}")
            items.append((line, pf, pred, None if gold is None else str(gold), label))
    warn_unreadable_golds(dict.fromkeys(g for _, _, _, g, _ in items), path)
    if mode == "pot":
        scores = score_pot([p or "" for _, _, p, _, _ in items], [g for _, _, _, g, _ in items])
        verdicts = [(s.answer, s.correct) for s in scores]
    else:
        verdicts = []
        for _, _, pred, gold, _ in items:
            g = gold_answer(gold)
            p = _pred_answer(pred, mode)
            ok = None if g is None or not is_parseable_gold(g, timeout_s) else is_equivalent(p, g, timeout_s)
            verdicts.append((p, ok))
    results = []
    for (line, pf, _, gold, label), (answer, ok) in zip(items, verdicts, strict=True):
        r = {"line": line, "field": pf, "pred_answer": answer, "gold_answer": gold_answer(gold), "correct": ok}
        if label_fields:
            r["label"] = label
        results.append(r)
    summary: dict[str, Any] = {
        "file": path,
        "predictions": len(results),
        "correct": sum(r["correct"] is True for r in results),
        "incorrect": sum(r["correct"] is False for r in results),
        "unparseable_gold": sum(r["correct"] is None for r in results),
    }
    if label_fields:
        disagreements = [r for r in results if r["correct"] is not None and r["correct"] != r["label"]]
        judged = sum(r["correct"] is not None for r in results)
        summary["agreement"] = (judged - len(disagreements)) / judged if judged else None
        summary["disagreements"] = len(disagreements)
        summary["first_disagreements"] = disagreements[:10]
    return summary, results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rewards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="judge one prediction (--pred/--gold) or a jsonl file (--jsonl)")
    check.add_argument("--pred", help="a completion, program output or answer")
    check.add_argument("--gold", help="the gold answer (or a worked solution ending in '#### x')")
    check.add_argument("--jsonl", help="a jsonl file to judge row by row")
    check.add_argument("--pred-field", action="append", default=None,
                       help="field of the prediction (dotted path; repeatable); default 'completion'")
    check.add_argument("--gold-field", default="answer", help="field of the gold answer (default 'answer')")
    check.add_argument("--label-field", action="append", default=[],
                       help="boolean label to compare with, one per --pred-field")
    check.add_argument("--mode", choices=("cot", "answer", "pot"), default=None,
                       help="cot: find the final answer in the text (default for --jsonl); answer: the text is "
                            "the answer (default for --pred); pot: run the completion's program in the sandbox")
    check.add_argument("--out", help="write one result row per prediction to this jsonl file")
    check.add_argument("--limit", type=int, help="only the first N rows")
    check.add_argument("--timeout", type=float, default=None, help="time limit of a symbolic check, seconds")
    args = parser.parse_args(argv)

    try:
        if args.jsonl:
            if args.pred is not None or args.gold is not None:
                parser.error("give either --jsonl or --pred/--gold, not both")
            summary, results = check_file(args.jsonl, args.pred_field or ["completion"], args.gold_field,
                                          args.label_field, args.mode or "cot", args.limit, args.timeout)
            if args.out:
                write_jsonl(args.out, results)
            print(json.dumps(summary, indent=2))
            return 1 if summary.get("disagreements") else 0
        if args.pred is None or args.gold is None:
            parser.error("give --pred and --gold, or --jsonl")
        verdict = check_pair(args.pred, args.gold, args.mode or "answer", args.timeout)
        print(json.dumps(verdict))
        return 0 if verdict["equivalent"] else 1
    except (DataFormatError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
