"""Data hygiene for synthesized training data: duplicates and evaluation-set contamination.

- Exact duplicate problems: the same question once case, spacing and punctuation are ignored.
- Near-duplicate problems: word 5-gram shingle Jaccard similarity at or above a threshold *and*
  the same gold answer (two questions that differ only in a number are different problems).
  Candidates come from an inverted index of shingles, so the cost grows with the data, not with
  its square.
- Duplicate solutions of one problem: programs equal once comments, spacing and variable names
  are normalised (``stages.common.pot.program_key``).
- Decontamination against evaluation sets (GSM8K test by default): a problem whose question
  shares any word 13-gram with an evaluation question is removed, the approach of open-r1's
  ``scripts/decontaminate.py`` (lower-cased, whitespace-normalised word n-grams).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_PUNCT_RE = re.compile(r"[^\w\s]")


def normalize_text(text: str) -> str:
    """Lower-cased, whitespace-collapsed text (open-r1's ``normalize_string``)."""
    return " ".join(text.lower().split())


def word_ngrams(text: str, n: int) -> set[str]:
    """The word n-grams of normalised text."""
    words = normalize_text(text).split()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


class Decontaminator:
    """Flags texts that share a word n-gram with any text of the evaluation sets."""

    def __init__(self, eval_sets: dict[str, Iterable[str]], n: int = 13):
        self.n = n
        self.lookup: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        for name, texts in eval_sets.items():
            count = 0
            for t in texts:
                count += 1
                for g in word_ngrams(t, n):
                    self.lookup.setdefault(g, name)
            self.sizes[name] = count

    def match(self, text: str) -> str | None:
        """The name of the first evaluation set ``text`` overlaps with, or None."""
        for g in word_ngrams(text, self.n):
            hit = self.lookup.get(g)
            if hit is not None:
                return hit
        return None


def question_key(text: str) -> str:
    """Exact-duplicate key of a question: case, spacing and punctuation ignored."""
    return " ".join(_PUNCT_RE.sub(" ", text.lower()).split())


def _shingles(text: str, k: int = 5) -> frozenset[str]:
    words = question_key(text).split()
    if len(words) < k:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i : i + k]) for i in range(len(words) - k + 1))


@dataclass
class Removed:
    problem: dict
    reason: str  # "duplicate of <id>", "near-duplicate of <id>", "contaminated: <eval set>"


def dedup_problems(problems: Sequence[dict], *, near_threshold: float | None = 0.9,
                   max_df: int = 50) -> tuple[list[dict], list[Removed]]:
    """Problems without exact and near duplicates (the first occurrence is kept)."""
    kept: list[dict] = []
    removed: list[Removed] = []
    seen: dict[str, str] = {}
    for p in problems:
        key = question_key(p["question"])
        if key in seen:
            removed.append(Removed(p, f"duplicate of {seen[key]}"))
            continue
        seen[key] = p["id"]
        kept.append(p)
    if not near_threshold:
        return kept, removed
    shingles = [_shingles(p["question"]) for p in kept]
    df: dict[str, int] = defaultdict(int)
    for sh in shingles:
        for g in sh:
            df[g] += 1
    index: dict[str, list[int]] = defaultdict(list)
    out: list[dict] = []
    for i, (p, sh) in enumerate(zip(kept, shingles, strict=True)):
        # Shingles shared by many questions ("how many apples does she") say nothing about
        # duplication and would make the candidate lists quadratic: only rarer ones index.
        rare = [g for g in sh if df[g] <= max_df]
        candidates = {j for g in rare for j in index[g]}
        dup = None
        for j in sorted(candidates):
            other = shingles[j]
            if kept[j]["answer"] == p["answer"] and len(sh & other) / len(sh | other) >= near_threshold:
                dup = kept[j]["id"]
                break
        if dup is not None:
            removed.append(Removed(p, f"near-duplicate of {dup}"))
            continue
        for g in rare:
            index[g].append(i)
        out.append(p)
    return out, removed


def decontaminate(problems: Sequence[dict], decon: Decontaminator | None) -> tuple[list[dict], list[Removed]]:
    """Problems whose question overlaps no evaluation set, and the removed ones."""
    if decon is None:
        return list(problems), []
    kept, removed = [], []
    for p in problems:
        hit = decon.match(p["question"])
        if hit is None:
            kept.append(p)
        else:
            removed.append(Removed(p, f"contaminated: {hit} ({decon.n}-gram overlap)"))
    return kept, removed
