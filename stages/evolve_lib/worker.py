"""One process's share of an evolve round: best-of-N samples of its problems, the keep filter,
tree exploration for the problems that kept nothing, and the plain best-of-N control that gets
the same number of generated tokens as the tree did (so that the stage reports what the tree adds
at equal cost).

Every problem ends as solution rows (``origin`` sample or tree; ``kept`` true, or false with a
``reason``) plus one summary row (``_summary``: tokens, tree and control outcome, or ``failed``).
A problem whose generation or scoring raises is retried alone; if it fails again it is recorded
as failed (counted and logged by the stage), never dropped silently and never fatal.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stages.evolve_lib.keep import passes, select
from stages.evolve_lib.sampling import SolutionScorer, Timings, continuation_prefix, prompt_texts
from stages.evolve_lib.tree import TreeOptions, explore, seed_search

log = logging.getLogger("mathforge.evolve")

CONTROL_ROUNDS = 4  # generation calls the control may take to reach the tree's token count
# fields of a solution row that are written out (``steps`` is the scorer's working copy)
HIDDEN = ("steps",)


@dataclass(frozen=True)
class SamplingOptions:
    num_samples: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 160
    threshold: float = 0.6
    aggregation: str = "min"
    keep_per_problem: int = 2
    tree: TreeOptions | None = None  # None: no tree exploration
    compare_bon: bool = True  # the plain best-of-N control at the tree's token count


class Worker:
    """Samples, scores, filters and explores one list of problems with one sampler and PRM."""

    def __init__(self, sampler: Any, scorer: SolutionScorer, tokenizer: Any, opts: SamplingOptions):
        self.sampler, self.scorer, self.tokenizer, self.opts = sampler, scorer, tokenizer, opts
        self._calls = 0
        self._seed = 0

    @property
    def timings(self) -> Timings:
        return self.scorer.timings

    # -- generation ------------------------------------------------------------------------

    def _generate(self, prompts: Sequence[str], n: int) -> list[list[tuple[str, int]]]:
        self._calls += 1
        t0 = time.perf_counter()
        outs = self.sampler.generate(prompts, n, temperature=self.opts.temperature, top_p=self.opts.top_p,
                                     max_new_tokens=self.opts.max_new_tokens, seed=self._seed + 7919 * self._calls)
        self.timings.generation_s += time.perf_counter() - t0
        self.timings.generated_tokens += sum(k for out in outs for _, k in out)
        self.timings.generate_calls += 1
        return outs

    def _token_counts(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]] if texts else []

    def _rows(self, problems: Sequence[dict], prefixes: Sequence[tuple[str, ...]], outs, origin: str) -> list[list[dict]]:
        """Scored solution rows, one list per (problem, prefix) request."""
        grouped = []
        for problem, prefix, out in zip(problems, prefixes, outs, strict=True):
            head = continuation_prefix(prefix)
            grouped.append([{"id": problem["id"], "question": problem["question"], "answer": problem["answer"],
                             "completion": head + text, "new_tokens": k, "origin": origin, "sample": j,
                             **({"level": problem["level"]} if "level" in problem else {})}
                            for j, (text, k) in enumerate(out)])
        flat = [r for rows in grouped for r in rows]
        for row, k in zip(flat, self._token_counts([r["completion"] for r in flat]), strict=True):
            row["n_tokens"] = k
        self.scorer.score(flat)
        return grouped

    # -- one round -----------------------------------------------------------------------

    def run(self, problems: Sequence[dict], *, seed: int, kept_before: dict[str, set[str]]) -> tuple[list, list]:
        """(solution rows, summary rows) of ``problems``; a failing batch is retried one problem
        at a time, and a problem that fails alone gets a ``failed`` summary."""
        if not problems:
            return [], []
        self._seed, self._calls = seed, 0
        try:
            return self._run(problems, kept_before)
        except Exception as e:  # a failing problem must not end the stage: retried alone below
            if len(problems) == 1:
                log.warning("evolve: problem %s failed: %s: %s", problems[0]["id"], type(e).__name__, e)
                return [], [{"id": problems[0]["id"], "_summary": True, "failed": f"{type(e).__name__}: {e}"[:500]}]
            log.warning("evolve: a batch of %d problems failed (%s: %s); retrying them one at a time", len(problems),
                        type(e).__name__, e)
        rows, summaries = [], []
        for i, problem in enumerate(problems):
            r, s = self.run([problem], seed=seed + 104729 * (i + 1), kept_before=kept_before)
            rows += r
            summaries += s
        return rows, summaries

    def _run(self, problems: Sequence[dict], kept_before: dict[str, set[str]]) -> tuple[list, list]:
        opts = self.opts
        outs = self._generate(prompt_texts(self.tokenizer, [p["question"] for p in problems]), opts.num_samples)
        samples = self._rows(problems, [()] * len(problems), outs, "sample")
        rows: list[dict] = []
        summaries: dict[str, dict] = {}
        unsolved = []
        for problem, sample_rows in zip(problems, samples, strict=True):
            kept, discarded = select(sample_rows, threshold=opts.threshold, k=opts.keep_per_problem,
                                     kept_before=kept_before.get(problem["id"], ()))
            rows += _mark(kept, discarded)
            passing = sum(passes(r, opts.threshold) for r in sample_rows)
            summaries[problem["id"]] = {
                "id": problem["id"], "_summary": True, "failed": None, "samples": len(sample_rows),
                "sample_tokens": sum(r["new_tokens"] for r in sample_rows), "passing_samples": passing,
                "kept": len(kept), "tree": False, **({"level": problem["level"]} if "level" in problem else {})}
            if passing == 0:
                unsolved.append((problem, sample_rows))
        if opts.tree is not None and unsolved:
            searches = [seed_search(p, s, opts.tree) for p, s in unsolved]
            explore(searches, self._expand, opts.tree)
            for search in searches:
                pid = search.problem["id"]
                kept, discarded = select(search.rows, threshold=opts.threshold, k=opts.keep_per_problem,
                                         kept_before=kept_before.get(pid, ()))
                rows += _mark(kept, discarded)
                summaries[pid].update(
                    tree=True, tree_rows=len(search.rows), tree_tokens=search.spent, tree_expansions=search.expansions,
                    tree_stop=search.stop_reason, tree_passing=len(search.passing) > 0,
                    kept=summaries[pid]["kept"] + len(kept))
            if opts.compare_bon:
                self._control([s.problem for s in searches], [s.spent for s in searches],
                              [summaries[s.problem["id"]] for s in searches], [r for _, r in unsolved])
        for row in rows:
            for name in HIDDEN:
                row.pop(name, None)
        return rows, list(summaries.values())

    def _expand(self, requests: list[tuple[dict, tuple[str, ...]]], branching: int) -> list[list[dict]]:
        """Tree exploration's callback: ``branching`` scored continuations of each prefix."""
        problems = [p for p, _ in requests]
        prefixes = [steps for _, steps in requests]
        outs = self._generate(prompt_texts(self.tokenizer, [p["question"] for p in problems], prefixes), branching)
        return self._rows(problems, prefixes, outs, "tree")

    def _control(self, problems: list[dict], budgets: list[int], summaries: list[dict],
                 samples: list[list[dict]]) -> None:
        """Plain best-of-N with each problem's tree token count: fresh samples, in order, until
        their generated tokens reach the tree's; covered when one of them passes the filter."""
        state = [{"spent": 0, "n": 0, "covered": False} for _ in problems]
        est = [max(1.0, sum(r["new_tokens"] for r in s) / len(s)) if s else float(self.opts.max_new_tokens)
               for s in samples]
        index = {p["id"]: i for i, p in enumerate(problems)}
        for _ in range(CONTROL_ROUNDS):
            todo = [i for i, st in enumerate(state) if not st["covered"] and st["spent"] < budgets[i]]
            if not todo:
                break
            counts = [max(1, math.ceil((budgets[i] - state[i]["spent"]) / est[i])) for i in todo]
            request = [problems[i] for i, c in zip(todo, counts, strict=True) for _ in range(c)]
            outs = self._generate(prompt_texts(self.tokenizer, [p["question"] for p in request]), 1)
            flat = [rows[0] for rows in self._rows(request, [()] * len(request), outs, "bon_control")]
            for row in flat:  # in generation order per problem: stop at the budget or the first pass
                i = index[row["id"]]
                st = state[i]
                if st["covered"] or st["spent"] >= budgets[i]:
                    continue
                st["spent"] += row["new_tokens"]
                st["n"] += 1
                st["covered"] = passes(row, self.opts.threshold)
        for st, summary in zip(state, summaries, strict=True):
            summary.update(control_tokens=st["spent"], control_samples=st["n"], control_passing=st["covered"])


def _mark(kept: list[dict], discarded: list[dict]) -> list[dict]:
    return [{**r, "kept": True} for r in kept] + [{**r, "kept": False} for r in discarded]
