"""PRM evaluation: step classification metrics, ProcessBench-style first-error identification and
best-of-N selection (the PRM's pick against a random pick and a majority vote)."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from stages.common.stats import wilson_interval

AGGREGATIONS = {"min": min, "product": math.prod, "last": lambda xs: xs[-1]}


def step_metrics(correct: Sequence[bool], probs: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, per-class and weighted precision / recall / F1, ROC-AUC of step predictions
    (scikit-learn's implementations)."""
    from sklearn.metrics import (  # deferred: heavy import
        accuracy_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y = [int(c) for c in correct]
    pred = [int(p >= threshold) for p in probs]
    out: dict[str, Any] = {"n_steps": len(y), "positive_rate": sum(y) / len(y) if y else 0.0,
                           "accuracy": accuracy_score(y, pred) if y else 0.0}
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    for k, name in enumerate(("wrong", "correct")):
        out[name] = {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])}
    pw, rw, fw, _ = precision_recall_fscore_support(y, pred, average="weighted", zero_division=0)
    out["weighted"] = {"precision": float(pw), "recall": float(rw), "f1": float(fw)}
    out["roc_auc"] = float(roc_auc_score(y, probs)) if 0 < sum(y) < len(y) else None
    return out


def class_metrics(gold: Sequence[int], pred: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    """Per-class precision / recall / F1 / support, their macro and weighted averages, accuracy and
    the confusion matrix (rows: gold class, columns: predicted class, in ``names`` order) of
    class predictions (BMUq's three labels: negative, neutral, positive)."""
    from sklearn.metrics import (  # deferred: heavy import
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    labels = list(range(len(names)))
    out: dict[str, Any] = {"n_steps": len(gold), "classes": list(names),
                           "accuracy": float(accuracy_score(gold, pred)) if gold else 0.0}
    if not gold:
        return out
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
    out["per_class"] = {name: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]),
                               "support": int(s[k])} for k, name in enumerate(names)}
    for avg in ("macro", "weighted"):
        pa, ra, fa, _ = precision_recall_fscore_support(gold, pred, labels=labels, average=avg, zero_division=0)
        out[avg] = {"precision": float(pa), "recall": float(ra), "f1": float(fa)}
    out["confusion_matrix"] = confusion_matrix(gold, pred, labels=labels).tolist()
    return out


def first_error(flags: Sequence[bool]) -> int:
    """Index of the first False, -1 when every step is correct."""
    return next((i for i, ok in enumerate(flags) if not ok), -1)


def first_error_metrics(gold: Sequence[Sequence[bool]], probs: Sequence[Sequence[float]],
                        threshold: float = 0.5) -> dict[str, Any]:
    """ProcessBench: the predicted first error is the first step scored below ``threshold``;
    F1 is the harmonic mean of the accuracy on solutions with an error and on correct ones."""
    err_hits = err_n = ok_hits = ok_n = 0
    for g, p in zip(gold, probs, strict=True):
        want = first_error(g)
        got = first_error([x >= threshold for x in p])
        if want >= 0:
            err_n += 1
            err_hits += got == want
        else:
            ok_n += 1
            ok_hits += got == -1
    acc_err = err_hits / err_n if err_n else 0.0
    acc_ok = ok_hits / ok_n if ok_n else 0.0
    f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if acc_err + acc_ok else 0.0
    return {"n_error": err_n, "n_correct": ok_n, "acc_error": acc_err, "acc_correct": acc_ok, "f1": f1}


def _ci(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(k, n)
    return {"accuracy": k / n if n else 0.0, "ci95": [lo, hi], "n": n}


def best_of_n(groups: Sequence[Sequence[dict]], *, seed: int = 0, n_boot: int = 2000) -> dict[str, Any]:
    """Best-of-N on held-out problems: each group is one problem's N samples, each
    ``{"scores": [step P(correct)], "correct": bool, "answer": str | None}``. Reports the PRM
    pick's accuracy per aggregation, a random pick (one seeded draw, plus the exact expected
    accuracy), a majority vote over the answers and the oracle (pass@N), with 95% Wilson
    intervals, and a paired bootstrap interval of PRM(min) minus random."""
    rng = random.Random(seed)
    n = len(groups)
    picks: dict[str, list[bool]] = {a: [] for a in AGGREGATIONS}
    rand, vote, oracle, expected = [], [], [], 0.0
    for g in groups:
        for agg, fn in AGGREGATIONS.items():
            vals = [fn(s["scores"]) if s["scores"] else 0.0 for s in g]
            picks[agg].append(bool(g[max(range(len(g)), key=lambda i: vals[i])]["correct"]))
        rand.append(bool(rng.choice(g)["correct"]))
        expected += sum(bool(s["correct"]) for s in g) / len(g)
        answers = Counter(s["answer"] for s in g if s["answer"] is not None)
        top = answers.most_common(1)[0][0] if answers else None
        vote.append(any(s["answer"] == top and s["correct"] for s in g) if top is not None else False)
        oracle.append(any(s["correct"] for s in g))
    out: dict[str, Any] = {"n_problems": n, "n_samples": len(groups[0]) if groups else 0}
    for agg in AGGREGATIONS:
        out[f"prm_{agg}"] = _ci(sum(picks[agg]), n)
    out["random"] = _ci(sum(rand), n)
    out["random_expected_accuracy"] = expected / n if n else 0.0
    out["majority_vote"] = _ci(sum(vote), n)
    out["oracle"] = _ci(sum(oracle), n)
    # the random pick's expected accuracy per problem removes the draw's noise from the paired difference
    exp = [sum(bool(s["correct"]) for s in g) / len(g) for g in groups]
    diffs = [float(a) - b for a, b in zip(picks["min"], exp, strict=True)]
    boot = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot)) if n else [0.0]
    out["prm_min_minus_random"] = {"mean": sum(diffs) / n if n else 0.0,
                                   "ci95": [boot[int(0.025 * len(boot))], boot[int(0.975 * len(boot)) - 1]]}
    return out
