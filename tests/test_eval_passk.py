"""eval.passk: the unbiased pass@k estimator, majority votes and PRM best-of-k."""

from __future__ import annotations

import itertools
import math

import pytest

from eval.passk import (
    best_of_index,
    majority_index,
    pass_at_k,
    summarize_samples,
    weighted_majority_index,
)


def _pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n samples (c correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_enumeration(n, c, k), abs=1e-12)


def test_pass_at_k_closed_form_and_edges():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(200, 17, 10) == pytest.approx(1 - math.comb(183, 10) / math.comb(200, 10))
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(3, 4, 1)


def test_majority_groups_equal_numbers_written_differently():
    # "1,000", "1000.0" and "$1000" are one answer (3 votes) against "7" (2 votes)
    answers = ["7", "1,000", "7", "1000.0", "$1000", None]
    i = majority_index(answers)
    assert answers[i] == "1,000"
    assert majority_index([None, "", None]) is None
    # ties go to the answer seen first
    assert majority_index(["3", "4", "4", "3"]) == 0


def test_weighted_majority_and_best_of():
    answers = ["5", "6", "6"]
    assert weighted_majority_index(answers, [0.9, 0.3, 0.4]) == 0  # 0.9 > 0.3 + 0.4
    assert weighted_majority_index(answers, [0.5, 0.3, 0.4]) == 1
    assert best_of_index([0.2, 0.8, 0.8]) == 1
    assert best_of_index([]) is None


def test_summarize_samples_with_prm():
    def j(answer, correct):
        return {"answer": answer, "correct": correct}

    judgments = [
        [j("4", True), j("5", False), j("5", False), j("4", True)],   # tie 2-2: first seen ("4") wins
        [j("1", False), j("2", True), j("1", False), j("1", False)],  # majority wrong
    ]
    prm = [[0.1, 0.9, 0.2, 0.3], [0.1, 0.95, 0.1, 0.1]]
    out = summarize_samples(judgments, ks=[1, 4], prm_scores=prm)
    assert out["pass@1"] == pytest.approx((0.5 + 0.25) / 2)
    assert out["pass@4"] == pytest.approx(1.0)
    assert out["maj@4"] == pytest.approx(0.5)
    assert out["prm_best_of_4"] == pytest.approx(0.5)  # picks "5" (wrong) then "2" (right)
    # weighted: problem 1: "4" 0.4 vs "5" 1.1 -> wrong; problem 2: "2" 0.95 vs "1" 0.3 -> right
    assert out["prm_weighted_maj@4"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="PRM score lists"):
        summarize_samples(judgments, ks=[1], prm_scores=prm[:1])
