"""Sampling metrics over judged samples: unbiased pass@k, majority vote, PRM-weighted best-of-k.

A *judgment* is one sample's verdict: ``{"correct": bool, "answer": str | None, ...}`` (see
``eval.metrics``). Answers are grouped by their canonical number (``rewards.normalize_number``:
``"1,000"``, ``"1000.0"`` and ``"$1000"`` vote together), else by their stripped text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rewards import normalize_number


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator of pass@k from n samples of which c are correct (Chen et al., 2021):
    ``1 - C(n-c, k) / C(n, k)``, computed as a product to stay exact for large n."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def answer_key(answer: str | None) -> str | None:
    """What answers are grouped by in a vote: the canonical number, else the stripped text."""
    if answer is None or not str(answer).strip():
        return None

    text = str(answer).strip()
    return normalize_number(text) or text


def _vote(answers: Sequence[str | None], weights: Sequence[float]) -> int | None:
    totals: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, (a, w) in enumerate(zip(answers, weights, strict=True)):
        key = answer_key(a)
        if key is None:
            continue
        totals[key] = totals.get(key, 0.0) + w
        first.setdefault(key, i)
    if not totals:
        return None
    # highest total; ties go to the answer seen first
    best = max(totals, key=lambda k: (totals[k], -first[k]))
    return first[best]


def majority_index(answers: Sequence[str | None]) -> int | None:
    """Index of a sample holding the most frequent answer (the first such sample), None when no
    sample has an answer."""
    return _vote(answers, [1.0] * len(answers))


def weighted_majority_index(answers: Sequence[str | None], weights: Sequence[float]) -> int | None:
    """Like :func:`majority_index`, each sample's vote weighted (e.g. by its PRM score)."""
    return _vote(answers, weights)


def best_of_index(scores: Sequence[float]) -> int | None:
    """Index of the highest score (the first on ties); None for no samples."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i)) if scores else None


def summarize_samples(judgments: Sequence[Sequence[dict]], ks: Sequence[int] = (),
                      prm_scores: Sequence[Sequence[float]] | None = None) -> dict[str, float]:
    """Corpus metrics from per-problem sample judgments: ``pass@k`` for each k in ``ks``
    (unbiased, n = samples per problem), ``maj@n``, and with PRM scores ``prm_best_of_n`` (the
    highest-scored sample) and ``prm_weighted_maj@n`` (answer vote weighted by score)."""
    if not judgments:
        return {}
    n = min(len(js) for js in judgments)
    out: dict[str, float] = {}
    for k in ks:
        out[f"pass@{k}"] = _mean(pass_at_k(n, sum(j["correct"] for j in js[:n]), k) for js in judgments)
    out[f"maj@{n}"] = _mean(_picked(js[:n], majority_index([j["answer"] for j in js[:n]])) for js in judgments)
    if prm_scores is not None:
        if len(prm_scores) != len(judgments):
            raise ValueError(f"{len(prm_scores)} PRM score lists for {len(judgments)} problems")
        out[f"prm_best_of_{n}"] = _mean(_picked(js[:n], best_of_index(list(s[:n])))
                                        for js, s in zip(judgments, prm_scores, strict=True))
        out[f"prm_weighted_maj@{n}"] = _mean(
            _picked(js[:n], weighted_majority_index([j["answer"] for j in js[:n]], list(s[:n])))
            for js, s in zip(judgments, prm_scores, strict=True))
    return out


def _picked(js: Sequence[dict], i: int | None) -> float:
    return float(js[i]["correct"]) if i is not None else 0.0


def _mean(values) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else 0.0

