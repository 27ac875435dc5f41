"""Preference pairs for DPO, each recording its ``kind``:

- ``strip``: a correct program (chosen) stripped of comments, docstrings, intermediate prints,
  dead and redundant assignments (:mod:`stages.dpo_lib.strip`, on the AST) against the original
  (rejected), when the sandbox confirms the stripped one prints the same answer and it is
  shorter by ``strip_min_saving`` of the original's tokens;
- ``sampled``: among a problem's correct solutions (distinct programs), the shortest (chosen)
  against the longest (rejected), when their token counts differ by ``sampled_min_ratio``;
- ``correct_vs_wrong``: a problem's shortest correct solution against one of its wrong ones;
- ``revised`` (or the kind a pair file names): pairs read as they are, e.g. the revise stage's
  ``pairs.jsonl`` (repaired program against the wrong original).

A pair row: ``{"id", "question", "answer", "chosen", "rejected", "kind", "chosen_tokens",
"rejected_tokens", "source"}`` (chosen and rejected are PoT completions). Whatever cannot give a
pair is dropped and counted by kind and reason (:class:`Drops`), never used: a pair whose chosen
and rejected are equal, a stripped program that no longer parses or prints another answer, a
problem with no correct solution, a solution whose gold cannot be read.
"""

from __future__ import annotations

import ast
import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rewards import score_pot
from stages.common.pot import extract_program, format_completion
from stages.dpo_lib.strip import FEATURES, strip_program

KINDS = ("strip", "sampled", "correct_vs_wrong", "revised", "file")  # "file": a pair file's rows without a kind
TokenCounter = Callable[[Sequence[str]], list[int]]


@dataclass
class PairOptions:
    """How pairs are built and mixed (the stage's arguments, checked)."""

    mix: dict[str, float] = field(default_factory=lambda: {"strip": 1.0, "sampled": 1.0, "correct_vs_wrong": 0.0,
                                                           "revised": 1.0})
    strip_features: tuple[str, ...] = FEATURES
    strip_min_saving: float = 0.1
    sampled_min_ratio: float = 1.2
    max_pairs_per_problem: int = 2
    max_pairs: int | None = None
    seed: int = 0


class Drops:
    """What could not become a pair, counted by kind and reason."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)

    def add(self, kind: str, reason: str, n: int = 1) -> None:
        if n:
            self.counts[kind][reason] += n

    def to_json(self) -> dict[str, dict[str, int]]:
        return {kind: dict(sorted(c.items())) for kind, c in sorted(self.counts.items()) if c}


def pair_row(solution: dict, chosen: str, rejected: str, kind: str, chosen_tokens: int, rejected_tokens: int,
             source: str) -> dict:
    return {"id": solution["id"], "question": solution["question"], "answer": solution["answer"],
            "chosen": chosen, "rejected": rejected, "kind": kind, "chosen_tokens": chosen_tokens,
            "rejected_tokens": rejected_tokens, "source": source}


def _same(a: str, b: str) -> bool:
    return a.strip() == b.strip()


# ---------------------------------------------------------------------------------------------
# grouping solutions by problem


def group_by_problem(solutions: Iterable[dict], drops: Drops, kinds: Iterable[str]) -> dict[str, list[dict]]:
    """Solutions by problem (id and question); a solution whose gold could not be read
    (``correct`` None) is dropped and counted for every kind that reads solutions."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for s in solutions:
        if s.get("correct") is None:
            for kind in kinds:
                drops.add(kind, "unreadable_gold")
            continue
        groups[f"{s['id']}\x00{s['question']}"].append(s)
    return groups


def _distinct_correct(group: list[dict]) -> list[dict]:
    """The correct solutions of a problem, each distinct completion once (two samples that differ
    only in comments are distinct: that difference is what a pair teaches)."""
    seen: set[str] = set()
    out = []
    for s in group:
        text = s["completion"].strip()
        if s["correct"] is not True or text in seen:
            continue
        seen.add(text)
        out.append(s)
    return out


# ---------------------------------------------------------------------------------------------
# strip pairs


@dataclass
class StripCandidate:
    solution: dict
    stripped: str  # the stripped PoT completion
    original_tokens: int
    stripped_tokens: int
    source: str


def strip_candidates(groups: Sequence[list[dict]], count_tokens: TokenCounter, options: PairOptions,
                     drops: Drops, source_of: Callable[[dict], str]) -> list[StripCandidate]:
    """Stripped versions of the correct solutions (distinct programs, at most
    ``max_pairs_per_problem`` per problem) that are shorter by the margin; not yet run (see
    :func:`verify_strip`). Problems without a correct solution, and solutions with nothing to
    strip, are counted."""
    found: list[tuple[dict, str]] = []
    for group in groups:
        correct = _distinct_correct(group)
        if not correct:
            drops.add("strip", "no_correct_solution")
            continue
        taken = 0
        for s in correct:
            if taken == options.max_pairs_per_problem:
                break
            program = extract_program(s["completion"])
            if program is None:
                drops.add("strip", "no_program")
                continue
            result = strip_program(program, options.strip_features)
            if result.program is None:
                drops.add("strip", result.reason or "unchanged")
                continue
            found.append((s, format_completion(result.program)))
            taken += 1
    if not found:
        return []
    originals = count_tokens([s["completion"] for s, _ in found])
    strippeds = count_tokens([c for _, c in found])
    out = []
    for (s, stripped), n_orig, n_strip in zip(found, originals, strippeds, strict=True):
        if n_orig - n_strip < options.strip_min_saving * n_orig or n_strip >= n_orig:
            drops.add("strip", "below_margin")
            continue
        out.append(StripCandidate(s, stripped, n_orig, n_strip, source_of(s)))
    return out


def strip_pairs(groups: dict[str, list[dict]], count_tokens: TokenCounter, options: PairOptions, drops: Drops,
                source_of: Callable[[dict], str], sandbox: Any = None, *, limit: int | None = None
                ) -> tuple[list[dict], int]:
    """``strip`` pairs from the problems' correct solutions, problems taken in a seeded order
    until ``limit`` pairs are found (all of them without a limit): stripping and the sandbox run
    cost milliseconds per program, and a large synth set holds many more than a run trains on.
    Returns the pairs and the number of problems examined."""
    keys = sorted(groups)
    random.Random(options.seed).shuffle(keys)
    pairs: list[dict] = []
    pos = 0
    while pos < len(keys) and (limit is None or len(pairs) < limit):
        if limit is None:
            take = len(keys)
        else:  # enough problems for the pairs still missing, at the yield seen so far (and a margin)
            rate = len(pairs) / pos if pos and pairs else 1.0
            take = max(64, int(1.1 * (limit - len(pairs)) / max(rate, 0.05)))
        chunk = [groups[k] for k in keys[pos: pos + take]]
        pos += len(chunk)
        pairs += verify_strip(strip_candidates(chunk, count_tokens, options, drops, source_of), drops, sandbox)
    if limit is not None and len(pairs) > limit:
        drops.add("strip", "over_max_pairs", len(pairs) - limit)
        pairs = pairs[:limit]
    return pairs, pos


def verify_strip(candidates: Sequence[StripCandidate], drops: Drops, sandbox: Any = None) -> list[dict]:
    """Run every stripped program in the sandbox (one batch); keep those that still parse, run
    cleanly and print the original's answer (which must be the gold's): ``strip`` pairs."""
    kept_candidates = []
    for c in candidates:
        program = extract_program(c.stripped)
        try:
            ast.parse(program or "")
        except SyntaxError:
            drops.add("strip", "unparseable")
            continue
        if program is None or _same(c.stripped, c.solution["completion"]):
            drops.add("strip", "equal" if program else "no_program")
            continue
        kept_candidates.append(c)
    if not kept_candidates:
        return []
    scores = score_pot([c.stripped for c in kept_candidates], [c.solution["answer"] for c in kept_candidates],
                       sandbox)
    pairs = []
    for c, score in zip(kept_candidates, scores, strict=True):
        original_answer = c.solution.get("executed_answer")
        if score.status != "ok":
            drops.add("strip", "stripped_fails")
            continue
        if score.correct is not True or (original_answer is not None and score.answer != original_answer):
            drops.add("strip", "different_answer")
            continue
        pairs.append(pair_row(c.solution, c.stripped, c.solution["completion"], "strip", c.stripped_tokens,
                              c.original_tokens, c.source))
    return pairs


# ---------------------------------------------------------------------------------------------
# pairs among a problem's own solutions


def _tokens(solutions: list[dict], count_tokens: TokenCounter) -> list[int]:
    missing = [s["completion"] for s in solutions if not isinstance(s.get("n_tokens"), int)]
    counted = iter(count_tokens(missing) if missing else [])
    return [s["n_tokens"] if isinstance(s.get("n_tokens"), int) else next(counted) for s in solutions]


def sampled_pairs(groups: dict[str, list[dict]], count_tokens: TokenCounter, options: PairOptions, drops: Drops,
                  source_of: Callable[[dict], str]) -> list[dict]:
    """Per problem: its shortest correct solution against its longest, when the longest has at
    least ``sampled_min_ratio`` times the tokens."""
    pairs = []
    for group in groups.values():
        correct = _distinct_correct(group)
        if not correct:
            drops.add("sampled", "no_correct_solution")
            continue
        if len(correct) < 2:
            drops.add("sampled", "one_correct_program")
            continue
        lengths = _tokens(correct, count_tokens)
        order = sorted(range(len(correct)), key=lambda i: (lengths[i], i))
        short, long = order[0], order[-1]
        if lengths[long] < options.sampled_min_ratio * lengths[short]:
            drops.add("sampled", "below_ratio")
            continue
        chosen, rejected = correct[short], correct[long]
        if _same(chosen["completion"], rejected["completion"]):
            drops.add("sampled", "equal")
            continue
        pairs.append(pair_row(chosen, chosen["completion"], rejected["completion"], "sampled", lengths[short],
                              lengths[long], source_of(chosen)))
    return pairs


def correct_vs_wrong_pairs(groups: dict[str, list[dict]], count_tokens: TokenCounter, options: PairOptions,
                           drops: Drops, source_of: Callable[[dict], str]) -> list[dict]:
    """Per problem: its shortest correct solution against one of its wrong ones (a seeded pick)."""
    pairs = []
    for key, group in groups.items():
        correct = _distinct_correct(group)
        wrong = [s for s in group if s["correct"] is False]
        if not correct:
            drops.add("correct_vs_wrong", "no_correct_solution")
            continue
        if not wrong:
            drops.add("correct_vs_wrong", "no_wrong_solution")
            continue
        lengths = _tokens(correct, count_tokens)
        chosen = correct[min(range(len(correct)), key=lambda i: (lengths[i], i))]
        rng = random.Random(_seed(options.seed, key))
        rejected = wrong[rng.randrange(len(wrong))]
        if _same(chosen["completion"], rejected["completion"]):
            drops.add("correct_vs_wrong", "equal")
            continue
        (rejected_tokens,) = _tokens([rejected], count_tokens)
        pairs.append(pair_row(chosen, chosen["completion"], rejected["completion"], "correct_vs_wrong",
                              min(lengths), rejected_tokens, source_of(chosen)))
    return pairs


# ---------------------------------------------------------------------------------------------
# pairs read from a file, and the mix


def checked_pairs(rows: Iterable[dict], count_tokens: TokenCounter, drops: Drops, source: str) -> list[dict]:
    """Pair rows read from a file (revise's ``pairs.jsonl`` or any such jsonl), with their token
    counts; a pair whose chosen equals its rejected is dropped and counted."""
    rows = list(rows)
    kept = []
    for r in rows:
        if _same(r["chosen"], r["rejected"]):
            drops.add(r["kind"], "equal")
            continue
        kept.append(r)
    missing = [t for r in kept for key, t in (("chosen_tokens", r["chosen"]), ("rejected_tokens", r["rejected"]))
               if not isinstance(r.get(key), int)]
    counted = iter(count_tokens(missing) if missing else [])
    out = []
    for r in kept:
        tokens = {key: r[key] if isinstance(r.get(key), int) else next(counted)
                  for key in ("chosen_tokens", "rejected_tokens")}
        out.append({"id": r.get("id") or _problem_id(r["question"]), "question": r["question"],
                    "answer": r.get("answer"), "chosen": r["chosen"], "rejected": r["rejected"], "kind": r["kind"],
                    **tokens, "source": r.get("source", source)})
    return out


def _problem_id(question: str) -> str:
    return "q-" + hashlib.sha256(question.encode()).hexdigest()[:12]


def _seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def limit_per_problem(pairs: Sequence[dict], limit: int, drops: Drops, seed: int) -> list[dict]:
    """At most ``limit`` pairs of each kind per problem (a seeded choice), duplicates removed."""
    seen: set[tuple[str, str, str]] = set()
    by_problem: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for p in pairs:
        key = (p["question"], p["chosen"].strip(), p["rejected"].strip())
        if key in seen:
            drops.add(p["kind"], "duplicate")
            continue
        seen.add(key)
        by_problem[(p["kind"], p["question"])].append(p)
    out = []
    for (kind, question), group in by_problem.items():
        if len(group) > limit:
            random.Random(_seed(seed, question)).shuffle(group)
            drops.add(kind, "over_per_problem_limit", len(group) - limit)
            group = group[:limit]
        out += group
    return out


def mix(pairs: Sequence[dict], options: PairOptions, drops: Drops) -> list[dict]:
    """The training pairs: each kind weighted by ``options.mix`` (0 leaves it out, a share below 1
    keeps that share, a weight above 1 repeats its pairs), shuffled (seeded), at most
    ``options.max_pairs``."""
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for p in pairs:
        by_kind[p["kind"]].append(p)
    rng = random.Random(options.seed)
    out: list[dict] = []
    for kind in sorted(by_kind):
        group = by_kind[kind]
        weight = options.mix.get(kind, 1.0)
        whole, share = int(weight), weight - int(weight)
        extra = sorted(rng.sample(range(len(group)), round(share * len(group))))
        chosen = group * whole + [group[i] for i in extra]
        if weight < 1:
            drops.add(kind, "mix_weight", len(group) - len(chosen))
        out += chosen
    rng.shuffle(out)
    if options.max_pairs is not None and len(out) > options.max_pairs:
        for p in out[options.max_pairs:]:
            drops.add(p["kind"], "over_max_pairs")
        out = out[: options.max_pairs]
    return out


def build_pairs(solutions: Sequence[dict], pair_rows: Sequence[dict], count_tokens: TokenCounter,
                options: PairOptions, drops: Drops, *, source_of: Callable[[dict], str],
                sandbox: Any = None) -> list[dict]:
    """Every pair of every kind the options turn on, from ``solutions`` (Verified-format rows:
    question, answer, completion, correct, optional executed_answer and n_tokens) and pair rows
    read from files; bad ones dropped and counted in ``drops``. Not yet mixed (see :func:`mix`)."""
    on = {kind for kind, w in options.mix.items() if w > 0}
    solution_kinds = [k for k in ("strip", "sampled", "correct_vs_wrong") if k in on]
    groups = group_by_problem(solutions, drops, solution_kinds) if solution_kinds else {}
    pairs: list[dict] = []
    if "strip" in on and groups:
        pairs += strip_pairs(groups, count_tokens, options, drops, source_of, sandbox, limit=options.max_pairs)[0]
    if "sampled" in on and groups:
        pairs += sampled_pairs(groups, count_tokens, options, drops, source_of)
    if "correct_vs_wrong" in on and groups:
        pairs += correct_vs_wrong_pairs(groups, count_tokens, options, drops, source_of)
    file_pairs = [r for r in pair_rows if options.mix.get(r["kind"], 1.0) > 0]
    pairs += checked_pairs(file_pairs, count_tokens, drops, source="file")
    return limit_per_problem(pairs, options.max_pairs_per_problem, drops, options.seed)
