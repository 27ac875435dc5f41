"""Batch scoring of completions against gold answers: PoT through the sandbox, CoT by extraction.

These are the helpers every stage and eval call; the TRL reward functions in ``rewards.functions``
are thin wrappers over them. A PoT batch goes to the sandbox in one ``run_many`` call (distinct
programs only), and an optional :class:`ExecMemo` lets several rewards that score the same batch
(correctness, PRM bonus, length shapes) share that one run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rewards.equivalence import is_equivalent, read_gold
from rewards.extract import extract_answer, gold_answer
from sandbox import get_sandbox
from stages.common.pot import completion_text, extract_program

logger = logging.getLogger(__name__)
_warned_sources: set[str] = set()
_warned_lock = threading.Lock()
SCORED_BATCHES = "scored batches"  # the data source of golds met in score_pot/score_cot


@dataclass(frozen=True, slots=True)
class PotScore:
    """How one PoT completion fared. ``correct`` is None when the gold answer cannot be read;
    ``status`` is the sandbox's status (``"ok"`` only on a normal exit) or ``"no_code"``;
    ``answer`` is the final answer read from the program's output."""

    correct: bool | None
    answer: str | None
    status: str
    error_type: str | None
    program: str | None


class ExecMemo:
    """The sandbox results of the latest batch, by program text. Rewards built together share one,
    so the batch that the correctness reward ran is not run again by the PRM bonus or a length
    shape in the same training step. Holds one batch only, so memory stays bounded; with
    ``keep_all`` it keeps every batch's results (one evaluation: eval's judge, then the repair loop's
    verifier on the same greedy programs)."""

    def __init__(self, keep_all: bool = False) -> None:
        self._last: dict[str, Any] = {}
        self.keep_all = keep_all

    def __getstate__(self) -> dict[str, Any]:
        return {"_last": {}, "keep_all": self.keep_all}  # results are not worth shipping to another process

    def run(self, sandbox: Any, programs: Sequence[str]) -> list[Any]:
        """Results of ``programs`` in order; the missing distinct ones in one ``run_many``."""
        missing = [p for p in dict.fromkeys(programs) if p not in self._last]
        fresh = dict(zip(missing, sandbox.run_many(missing), strict=True)) if missing else {}
        results = [fresh[p] if p in fresh else self._last[p] for p in programs]
        if self.keep_all:
            self._last.update(fresh)
        else:
            self._last = dict(zip(programs, results, strict=True))
        return results

    def clear(self) -> None:
        self._last = {}


def run_programs(programs: Sequence[str], sandbox: Any = None, memo: ExecMemo | None = None) -> list[Any]:
    """Sandbox results of ``programs``: each distinct program runs once, all in one batch."""
    if sandbox is None:
        sandbox = get_sandbox()
    if memo is not None:
        return memo.run(sandbox, programs)
    distinct = list(dict.fromkeys(programs))
    by_program = dict(zip(distinct, sandbox.run_many(distinct), strict=True)) if distinct else {}
    return [by_program[p] for p in programs]


def readable_gold(gold: str | None) -> str | None:
    """The gold final answer of a dataset field (``rewards.extract.gold_answer``) when
    ``rewards.equivalence.read_gold`` can read it, else None."""
    answer = gold_answer(gold)
    return answer if answer is not None and read_gold(answer) is not None else None


def warn_unreadable_golds(golds: Iterable[str | None], source: str) -> int:
    """How many of ``golds`` cannot be read; the first time a ``source`` (a data source, such as
    a problem file) has any, one warning with their count and an example. Their completions are
    scored None (left out of GRPO's group baseline), never 0."""
    bad = [g for g in golds if readable_gold(g) is None]
    if bad:
        with _warned_lock:
            first = source not in _warned_sources
            _warned_sources.add(source)
        if first:
            logger.warning("%s: %d gold answer(s) cannot be read (e.g. %.200r); they are left out of scoring "
                           "(reward None), not scored 0. The rules: docs/answers.md", source, len(bad), bad[0])
    return len(bad)


def _golds(golds: Sequence[str | None]) -> list[str | None]:
    """Gold answers, None where unreadable (with a warning, once); each distinct gold checked once
    (a GRPO batch repeats every gold once per generation)."""
    checked: dict[str | None, str | None] = {g: readable_gold(g) for g in dict.fromkeys(golds)}
    warn_unreadable_golds([g for g, a in checked.items() if a is None], SCORED_BATCHES)
    return [checked[g] for g in golds]


def printed_answer(raw: str | None) -> str | None:
    """The answer a program printed (its last output line, as the sandbox reads it): the final answer
    ``rewards.extract`` finds in it, else the line itself; None when it printed nothing."""
    return (extract_answer(raw) or raw.strip()) if raw else None


def score_pot(
    completions: Sequence[Any],
    golds: Sequence[str | None],
    sandbox: Any = None,
    *,
    memo: ExecMemo | None = None,
) -> list[PotScore]:
    """Run each completion's program (one sandbox batch) and compare its printed answer with the
    gold. Completions are strings or TRL conversational lists; golds are answers or worked
    solutions ending in ``#### x``."""
    if len(completions) != len(golds):
        raise ValueError(f"score_pot: {len(completions)} completions but {len(golds)} gold answers")
    programs = [extract_program(completion_text(c)) for c in completions]
    to_run = [p for p in programs if p is not None]
    results = iter(run_programs(to_run, sandbox, memo) if to_run else [])
    scores = []
    for program, gold in zip(programs, _golds(golds), strict=True):
        if program is None:
            scores.append(PotScore(None if gold is None else False, None, "no_code", None, None))
            continue
        res = next(results)
        answer = printed_answer(res.answer)
        if gold is None:
            correct = None
        else:
            correct = res.status == "ok" and is_equivalent(answer, gold)
        scores.append(PotScore(correct, answer, res.status, res.error_type, program))
    return scores


def score_cot(completions: Sequence[Any], golds: Sequence[str | None]) -> list[bool | None]:
    """Whether each chain-of-thought completion's final answer (``rewards.extract``) equals the
    gold; None where the gold cannot be read."""
    if len(completions) != len(golds):
        raise ValueError(f"score_cot: {len(completions)} completions but {len(golds)} gold answers")
    out: list[bool | None] = []
    for c, gold in zip(completions, _golds(golds), strict=True):
        out.append(None if gold is None else is_equivalent(extract_answer(completion_text(c)), gold))
    return out
