"""Hooks into stages that eval uses but does not own: repair (the revise stage) and the PRM.

Both are loaded lazily, only when asked for (``--repair R``, ``--prm <checkpoint>``), and fail
before any generation with an error that says what is missing and what interface eval calls.

Repair, ``stages.revise_lib.repair.repair`` (the revise stage's library; not written yet)::

    repair(model, tokenizer, attempts: list[dict], *, rounds: int, max_new_tokens: int, seed: int)
        -> list[str]

``attempts`` are greedy PoT completions that failed *without looking at the gold*: no program,
or a program that did not exit normally (exception, failed ``assert``, timeout). Each is
``{"id", "question", "completion", "status", "error_type", "stderr"}``. ``repair`` returns one
completion per attempt: the result of at most ``rounds`` revise rounds (the revise stage decides
when to stop, e.g. once the program runs). eval scores the returned completions against the gold
(``rewards.score_pot``) and reports ``pass@1_repair``. Wrong answers of programs that ran are
not repaired: at test time nothing says they are wrong.

PRM, ``stages.prm_lib.scorer.PRMScorer``::

    PRMScorer(checkpoint).score(problems: list[str], solutions: list[str]) -> list[list[float]]

one list of step scores in [0, 1] per solution; eval aggregates them per solution (``min`` by
default, ``rewards.functions.AGGREGATIONS``) for PRM-weighted best-of-k.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rewards.functions import AGGREGATIONS
from sandbox import get_sandbox
from stages.common.checkpoint import CheckpointError
from stages.common.pot import extract_program

REPAIR_SIGNATURE = ("stages.revise_lib.repair.repair(model, tokenizer, attempts, *, rounds, max_new_tokens, seed) "
                    "-> list[str]")
PRM_SIGNATURE = "stages.prm_lib.scorer.PRMScorer(checkpoint).score(problems, solutions) -> list[list[float]]"


class StageUnavailable(RuntimeError):
    """A hook's stage module is missing or lacks the interface eval calls."""


def _missing_module(e: ImportError, module: str) -> bool:
    return isinstance(e, ModuleNotFoundError) and (e.name or "") in (module, module.rsplit(".", 1)[0])


def load_repair() -> Callable[..., list[str]]:
    """``stages.revise_lib.repair.repair``, or :class:`StageUnavailable` saying why."""
    try:
        from stages.revise_lib.repair import repair  # deferred: only with --repair; loads the revise library
    except ImportError as e:
        if _missing_module(e, "stages.revise_lib.repair"):
            raise StageUnavailable(
                f"--repair needs the revise stage, which does not exist yet (no module stages.revise_lib.repair). "
                f"eval calls {REPAIR_SIGNATURE}; see docs/eval.md. Run without --repair."
            ) from e
        if "repair" in str(e) and "cannot import name" in str(e):
            raise StageUnavailable(f"stages/revise_lib/repair.py has no function 'repair'; eval calls "
                                   f"{REPAIR_SIGNATURE}") from e
        raise
    return repair


def load_prm(checkpoint: str) -> Any:
    """A ``stages.prm_lib.scorer.PRMScorer`` for ``checkpoint`` (checked before any model loads), or
    :class:`StageUnavailable`."""
    from stages.prm_lib.scorer import PRMScorer  # deferred: loads torch and transformers

    try:
        PRMScorer.check(checkpoint)
    except CheckpointError as e:
        raise StageUnavailable(f"--prm {checkpoint}: {e}") from e
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


def repair_attempts(failures: Sequence[dict]) -> list[dict]:
    """The attempts handed to ``repair``: each failed completion with its sandbox feedback (the
    stderr of a run of its program; no gold)."""
    programs = [extract_program(f["completion"]) for f in failures]
    to_run = [p for p in programs if p is not None]
    results = iter(get_sandbox().run_many(to_run) if to_run else [])
    attempts = []
    for f, program in zip(failures, programs, strict=True):
        stderr = "no ```python block in the completion" if program is None else next(results).stderr
        attempts.append({"id": f["id"], "question": f["question"], "completion": f["completion"],
                         "status": f["status"], "error_type": f.get("error_type"), "stderr": stderr})
    return attempts


def run_repair(repair: Callable[..., list[str]], model: Any, tokenizer: Any, attempts: list[dict], *,
               rounds: int, max_new_tokens: int, seed: int) -> list[str]:
    """Call ``repair`` and check what it returns."""
    if not attempts:
        return []
    out = repair(model, tokenizer, attempts, rounds=rounds, max_new_tokens=max_new_tokens, seed=seed)
    if len(out) != len(attempts) or not all(isinstance(c, str) for c in out):
        raise StageUnavailable(f"stages.revise_lib.repair.repair returned {len(out)} items for {len(attempts)} attempts "
                               f"(expected one completion string each: {REPAIR_SIGNATURE})")
    return list(out)
