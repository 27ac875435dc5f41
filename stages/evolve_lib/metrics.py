"""The evolve stage's round metrics: yield, coverage, what tree exploration adds over plain
best-of-N at the same number of generated tokens, PRM score histograms of kept and discarded
solutions, failures, and generation speed with the share of sandbox and PRM time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from stages.evolve_lib.keep import REASONS

HISTOGRAM_BINS = 10


def histogram(values: Sequence[float], bins: int = HISTOGRAM_BINS) -> list[int]:
    """Counts of ``values`` in ``bins`` equal bins over [0, 1] (1.0 falls in the last)."""
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    return counts


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def timing_metrics(per_rank: Sequence[dict]) -> dict[str, Any]:
    """Generation speed and the scoring share from each process's timings (processes run side by
    side: the slowest one's seconds are the wall time of the phase)."""
    tokens = sum(t["generated_tokens"] for t in per_rank)
    generation = max((t["generation_s"] for t in per_rank), default=0.0)
    sandbox = max((t["sandbox_s"] for t in per_rank), default=0.0)
    prm = max((t["prm_s"] for t in per_rank), default=0.0)
    busy = max((t["generation_s"] + t["sandbox_s"] + t["prm_s"] for t in per_rank), default=0.0)
    return {"generated_tokens": tokens, "generation_s": round(generation, 3), "sandbox_s": round(sandbox, 3),
            "prm_s": round(prm, 3), "generated_tokens_per_s": tokens / generation if generation else None,
            "scoring_share_of_sampling": (sandbox + prm) / busy if busy else None,
            "processes": len(per_rank)}


def round_metrics(rows: Sequence[dict], summaries: Sequence[dict], n_problems: int) -> dict[str, Any]:
    """What one round produced (``rows``: every solution with ``kept`` and ``reason``;
    ``summaries``: one per problem)."""
    generated = [r for r in rows if r["origin"] in ("sample", "tree")]
    kept = [r for r in generated if r["kept"]]
    discarded = [r for r in generated if not r["kept"]]
    kept_ids = {r["id"] for r in kept}
    sample_ids = {r["id"] for r in kept if r["origin"] == "sample"}
    tree_ids = {r["id"] for r in kept if r["origin"] == "tree"} - sample_ids
    tried = [s for s in summaries if s.get("tree")]
    failed = [s for s in summaries if s.get("failed")]
    reasons = Counter(r["reason"] for r in discarded)
    out: dict[str, Any] = {
        "problems": n_problems,
        "problems_failed": len(failed),
        "failed_ids": [s["id"] for s in failed][:20],
        "samples": sum(r["origin"] == "sample" for r in generated),
        "tree_samples": sum(r["origin"] == "tree" for r in generated),
        "kept": len(kept),
        "kept_sample": sum(r["origin"] == "sample" for r in kept),
        "kept_tree": sum(r["origin"] == "tree" for r in kept),
        "discarded": {reason: reasons.get(reason, 0) for reason in REASONS},
        "yield": _share(len(kept), len(generated)),
        "coverage": _share(len(kept_ids), n_problems),
        "coverage_best_of_n": _share(len(sample_ids), n_problems),
        "coverage_added_by_tree": _share(len(tree_ids), n_problems),
        "exec_errors": sum(r.get("status") not in ("ok", "no_code") for r in generated),
        "tokens": {"samples": sum(r["new_tokens"] for r in generated if r["origin"] == "sample"),
                   "tree": sum(s.get("tree_tokens", 0) for s in tried),
                   "bon_control": sum(s.get("control_tokens", 0) for s in tried)},
        "prm_histogram": {
            "bins": [round(i / HISTOGRAM_BINS, 2) for i in range(HISTOGRAM_BINS + 1)],
            "kept": histogram([r["prm_score"] for r in kept]),
            "discarded": histogram([r["prm_score"] for r in discarded if r.get("prm_score") is not None]),
            "discarded_unscored": sum(r.get("prm_score") is None for r in discarded),
        },
    }
    if tried:
        with_control = [s for s in tried if "control_tokens" in s]
        out["tree_vs_best_of_n"] = {
            # the problems whose N samples passed nothing: the tree's extra tokens, and plain
            # best-of-N given the same number of extra generated tokens per problem
            "problems": len(tried),
            "tree_solved": sum(bool(s.get("tree_passing")) for s in tried),
            "tree_tokens": out["tokens"]["tree"],
            "best_of_n_solved": sum(bool(s.get("control_passing")) for s in with_control) if with_control else None,
            "best_of_n_tokens": out["tokens"]["bon_control"] if with_control else None,
            "stop_reasons": dict(Counter(s.get("tree_stop") for s in tried)),
        }
    levels = sorted({s["level"] for s in summaries if "level" in s})
    if len(levels) > 1:
        out["coverage_by_level"] = {
            str(lv): _share(len({s["id"] for s in summaries if s.get("level") == lv} & kept_ids),
                            sum(s.get("level") == lv for s in summaries)) for lv in levels}
    return out
