"""Hooks into stages that eval uses but does not own: the repair loop (the revise stage's library)
and the PRM.

Both are loaded lazily, only when asked for (``--repair``, ``--prm <checkpoint>``), and fail
before any generation with an error that says what is missing and what interface eval calls.

Repair, the module ``stages.revise_lib.repair`` (see docs/eval.md)::

    repair(policy, items: list[dict], options: RepairOptions, *, scorer=None) -> list[dict]

``items`` are greedy PoT answers ``{"id", "question", "completion"}``, no gold; ``options`` holds
the rounds, the PRM threshold, the prompt and the growth margin; ``scorer`` is the PRM (or None:
the sandbox signal alone). One record per item: whether the verifier flagged it (``attempted``),
every round (flagged step, reason, revision, its run and step scores), the ``final`` completion,
the ``stop`` reason and the ``extra_tokens`` generated. eval judges the finals by the gold
(``eval.repair``); the module's ``Verifier``, ``flag_step``, ``version_rank`` and
``token_counts`` rank the best-of-(1+R) comparison with the same verifier.

PRM, ``stages.prm_lib.scorer.PRMScorer``::

    PRMScorer(checkpoint).score(problems: list[str], solutions: list[str]) -> list[list[float]]

one list of step scores in [0, 1] per solution; eval aggregates them per solution (``min`` by
default, ``rewards.functions.AGGREGATIONS``) for PRM-weighted best-of-k; the repair loop calls its
``score_steps``. ``--prm @prm`` is the prm stage of the evaluated checkpoint's run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewards.functions import AGGREGATIONS
from stages.common.checkpoint import CheckpointError, stage_ref

log = logging.getLogger("mathforge.eval")

REPAIR_SIGNATURE = ("stages.revise_lib.repair.repair(policy, items, options, *, scorer=None) -> list[dict] "
                    "(with RepairOptions, Verifier, flag_step, version_rank, token_counts)")
REPAIR_NAMES = ("repair", "RepairOptions", "Verifier", "flag_step", "version_rank", "token_counts")
PRM_SIGNATURE = "stages.prm_lib.scorer.PRMScorer(checkpoint).score(problems, solutions) -> list[list[float]]"


class StageUnavailable(RuntimeError):
    """A hook's stage module is missing or lacks the interface eval calls."""


def _missing_module(e: ImportError, module: str) -> bool:
    return isinstance(e, ModuleNotFoundError) and (e.name or "") in (module, module.rsplit(".", 1)[0])


def load_repair() -> Any:
    """The module ``stages.revise_lib.repair``, or :class:`StageUnavailable` saying why."""
    try:
        from stages.revise_lib import repair  # deferred: only with --repair; loads the revise library
    except ImportError as e:
        if _missing_module(e, "stages.revise_lib.repair"):
            raise StageUnavailable(f"--repair needs the revise stage's library (no module stages.revise_lib.repair); "
                                   f"eval calls {REPAIR_SIGNATURE}; see docs/eval.md. Run without --repair.") from e
        raise
    missing = [n for n in REPAIR_NAMES if not hasattr(repair, n)]
    if missing:
        raise StageUnavailable(f"stages/revise_lib/repair.py lacks {missing}; eval calls {REPAIR_SIGNATURE}")
    return repair


def resolve_prm(spec: str, model_identity: dict[str, Any]) -> str | None:
    """The PRM checkpoint folder of ``--prm``, checked without loading a model. ``@<stage>`` is
    that stage of the evaluated checkpoint's run; when the run has none, None (eval goes on
    without a PRM, with a warning). A path that is not a PRM checkpoint is
    :class:`StageUnavailable`."""
    from stages.prm_lib.scorer import PRMScorer  # deferred: the PRM library imports torch

    path = spec
    if spec.startswith("@"):
        if model_identity.get("kind") != "checkpoint":
            raise StageUnavailable(f"--prm {spec}: '@<stage>' names a stage of the evaluated checkpoint's run, and "
                                   f"--model {model_identity.get('spec')} is not a stage checkpoint; give a path")
        path = stage_ref(spec, Path(model_identity["path"]).parent.parent)
        if not Path(path).exists():
            log.warning("--prm %s: %s does not exist (this run has no such stage): no PRM", spec, path)
            return None
    try:
        return str(PRMScorer.check(path))
    except CheckpointError as e:
        raise StageUnavailable(f"--prm {spec}: {e}") from e


def load_prm(checkpoint: str) -> Any:
    """A ``stages.prm_lib.scorer.PRMScorer`` for a checked ``checkpoint``."""
    from stages.prm_lib.scorer import PRMScorer  # deferred: loads torch and transformers

    return PRMScorer(checkpoint)


def prm_solution_scores(scorer: Any, problems: Sequence[str], solutions: Sequence[str],
                        aggregation: str = "min") -> list[float]:
    """One score per solution: its PRM step scores aggregated (no steps: 0.0)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"prm_aggregation must be one of {sorted(AGGREGATIONS)}, got {aggregation!r}")
    if not solutions:
        return []
    steps = scorer.score(list(problems), list(solutions))
    if len(steps) != len(solutions):
        raise StageUnavailable(f"the PRM returned {len(steps)} score lists for {len(solutions)} solutions "
                               f"(expected {PRM_SIGNATURE})")
    agg = AGGREGATIONS[aggregation]
    return [float(agg(list(s))) if len(s) else 0.0 for s in steps]
