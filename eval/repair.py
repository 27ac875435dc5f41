"""pass@1 with repair: the revise stage's loop (``stages.revise_lib.repair``) on the greedy PoT
answers that the verifier flags, without the gold, and, for comparison, best-of-(1+R) by the same
verifier on the same flagged answers (is revising better than sampling again?).

    eval = repair_eval(policy, greedy_rows, loop, options, scorer=prm, baseline_temperature=0.7)
    evals = repair_eval_sets(policy, [rows_of_set_a, rows_of_set_b], loop, options, scorer=prm)

``greedy_rows`` are eval's greedy PoT rows (``id``, ``question``, ``answer``, ``completion``,
``correct``). The loop decides which answers to revise (a sandbox failure, a step under the PRM
threshold, a quantity slip) and never sees the gold; the gold judges the final answers afterwards. The
comparison samples R fresh solutions (the plain PoT prompt) for every flagged answer and keeps
the best by the verifier (passes, runs, PRM score), once with all R samples and once with only the
samples that fit in the tokens the repair spent on that problem (the same token budget).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rewards import score_pot
from stages.common.generation import chat_prompts, generate
from stages.common.stats import wilson_interval

log = logging.getLogger("mathforge.eval")


def _rate(k: int, n: int) -> float:
    return k / n if n else 0.0


def outcome(before: Sequence[bool], after: Sequence[bool], extra_tokens: Sequence[int]) -> dict[str, Any]:
    """pass@1 after a method that replaces some answers, what it fixed and broke, and its cost."""
    n = len(before)
    right = sum(after)
    lo, hi = wilson_interval(right, n)
    fixed = sum(not b and a for b, a in zip(before, after, strict=True))
    broken = sum(b and not a for b, a in zip(before, after, strict=True))
    return {"pass@1": _rate(right, n), "pass@1_ci95": [lo, hi], "delta": _rate(right - sum(before), n),
            "fixed": fixed, "broken": broken, "fix_rate": _rate(fixed, n - sum(before)),
            "break_rate": _rate(broken, sum(before)),
            "extra_tokens_per_problem": _rate(sum(extra_tokens), n)}


def repair_eval(policy: Any, rows: list[dict], loop: Any, options: Any, *, scorer: Any = None,
                baseline: bool = True, baseline_temperature: float = 0.7, progress: bool = False) -> dict[str, Any]:
    """Run the repair loop on ``rows`` (adding each row's ``repair`` record) and return the
    metrics: plain pass@1 beside pass@1 with repair, attempted / fixed / broken, extra tokens per
    problem, stop reasons, and best-of-(1+R) by the verifier (all R samples, and at the repair's
    token budget). ``loop`` is the ``stages.revise_lib.repair`` module."""
    return repair_eval_sets(policy, [rows], loop, options, scorer=scorer, baseline=baseline,
                            baseline_temperature=baseline_temperature, progress=progress)[0]


def repair_eval_sets(policy: Any, sets: Sequence[list[dict]], loop: Any, options: Any, *, scorer: Any = None,
                     baseline: bool = True, baseline_temperature: float = 0.7, memo: Any = None,
                     progress: bool = False) -> list[dict[str, Any]]:
    """:func:`repair_eval` on several eval sets at once: one loop over the flagged answers of every set
    (and one best-of comparison), so that a round's generation is one batch for all of them; a round
    costs about as much for 10 answers as for 100 on CPU, where decoding is latency-bound. The metrics
    are per set, as each set alone would give; ``wall_s`` and ``best_of_wall_s`` are the shared walls,
    with ``sets_in_loop`` saying how many sets shared them. ``memo`` (a ``rewards.ExecMemo``) holds the
    sandbox results eval's judge already has for these programs."""
    rows = [r for one in sets for r in one]
    t0 = time.perf_counter()
    items = [{"id": r["id"], "question": r["question"], "completion": r["completion"]} for r in rows]
    # one verifier for the loop and the comparison: a greedy answer both verify is run and scored once
    verifier = loop.Verifier(policy.tokenizer, scorer, aggregation=options.aggregation, grounding=options.grounding,
                             memo=memo)
    records = loop.repair(policy, items, options, verifier=verifier, progress=progress) if rows else []
    loop_wall = round(time.perf_counter() - t0, 3)
    scores = score_pot([rec["final"] for rec in records], [r["answer"] for r in rows], memo=memo) if rows else []
    before = [r["correct"] is True for r in rows]
    after = [s.correct is True for s in scores]
    for r, rec, s in zip(rows, records, scores, strict=True):
        r["repair"] = {"attempted": rec["attempted"], "flag": rec["flag"], "stop": rec["stop"],
                       "rounds": rec["rounds"] if rec["attempted"] else [], "final_version": rec["final_version"],
                       "completion": rec["final"], "executed_answer": s.answer, "correct": s.correct is True,
                       "status": s.status, "extra_tokens": rec["extra_tokens"]}
    compared = None
    if baseline:
        t1 = time.perf_counter()
        compared = best_of_choices(policy, rows, records, loop, options, verifier=verifier,
                                   temperature=baseline_temperature, memo=memo, progress=progress)
        best_of_wall = round(time.perf_counter() - t1, 3)
    out, at = [], 0
    for one in sets:
        part = slice(at, at + len(one))
        at += len(one)
        metrics = _set_metrics(records[part], before[part], after[part], loop, options, scorer)
        metrics.update(wall_s=loop_wall, sets_in_loop=len(sets))
        if compared is not None:
            metrics.update(_best_of_metrics(options.rounds, baseline_temperature, before[part],
                                            {k: v[part] for k, v in compared.items()}))
            metrics["best_of_wall_s"] = best_of_wall
        out.append(metrics)
    return out


def _set_metrics(records: list[dict], before: list[bool], after: list[bool], loop: Any, options: Any,
                 scorer: Any) -> dict[str, Any]:
    entries = [e for rec in records for e in rec["rounds"]]
    attempted = [rec["attempted"] for rec in records]
    return {
        "rounds": options.rounds, "verifier": loop.verifier_signal(scorer is not None, options.grounding),
        "threshold": options.threshold if scorer is not None else None, "prompt": options.prompt,
        "restart_after": options.restart_after, "final": options.final,
        "n": len(records), "pass@1_before": _rate(sum(before), len(records)),
        "attempted": sum(attempted),
        "attempted_right": sum(a and b for a, b in zip(attempted, before, strict=True)),
        "attempted_wrong": sum(a and not b for a, b in zip(attempted, before, strict=True)),
        "wrong_not_flagged": sum(not a and not b for a, b in zip(attempted, before, strict=True)),
        **outcome(before, after, [rec["extra_tokens"] for rec in records]),
        "stops": dict(Counter(rec["stop"] for rec in records if rec["attempted"])),
        "flag_kinds": dict(Counter(rec["flag"]["kind"] for rec in records if rec["flag"])),
        "revisions": len(entries), "outcomes": dict(Counter(e["outcome"] for e in entries)),
        "syntax_errors": sum(e.get("error_type") in ("SyntaxError", "IndentationError") for e in entries),
        "timeouts": sum(e["status"] == "timeout" for e in entries)}


def _best_of_metrics(rounds: int, temperature: float, before: list[bool], compared: dict[str, list]) -> dict:
    return {"best_of": {"n": 1 + rounds, "temperature": temperature,
                        "samples_from_loop": sum(compared["reused"]),
                        **outcome(before, compared["all_ok"], compared["spent_all"])},
            "best_of_same_budget": {"temperature": temperature,
                                    **outcome(before, compared["budget_ok"], compared["spent_budget"])}}


def best_of_choices(policy: Any, rows: list[dict], records: list[dict], loop: Any, options: Any, *,
                    verifier: Any, temperature: float, memo: Any = None, progress: bool = False) -> dict[str, list]:
    """Best-of-(1+R) by the verifier on the answers the loop attempted: R fresh samples each (the
    plain PoT prompt), the greedy answer kept unless a sample ranks higher; and the same with only
    the samples whose tokens fit in what the repair spent on that problem. Per row: whether each
    choice is right by the gold (``all_ok``, ``budget_ok``), the tokens it spent (``spent_all``,
    ``spent_budget``) and how many of its samples the loop had drawn (``reused``).

    The fresh samples come first from the loop's own: a round that rewrites the whole program under
    the ``prefill`` prompt samples the policy under the plain PoT prompt (its opening fence prefilled;
    ``loop.plain_sampling``), at the comparison's temperature, and the record keeps those candidates
    (``plain_samples``). They are draws from the same distribution as a new sample (up to their length
    cap: the round's growth budget, not ``max_new_tokens``), so the comparison takes the first R of them
    and samples only what is missing: on the hard split, where most flagged answers reach such a round,
    it draws a fraction of its samples (a loop at another temperature, or with the feedback prompt,
    shares none). ``verifier``: the loop's (its sandbox results and PRM scores
    are reused); ``memo``: a ``rewards.ExecMemo`` for the gold's judging runs."""
    rounds = options.rounds
    flagged = [i for i, rec in enumerate(records) if rec["attempted"]]
    tokenizer = policy.tokenizer
    shared = options.temperature == temperature
    samples: list[list[str]] = [list(records[i].get("plain_samples") or [])[:rounds] if shared else []
                                for i in flagged]
    reused = [len(texts) for texts in samples]
    missing: dict[int, list[int]] = {}  # samples still to draw -> the flagged answers (positions) missing them
    for j, texts in enumerate(samples):
        if len(texts) < rounds:
            missing.setdefault(rounds - len(texts), []).append(j)
    for count, positions in sorted(missing.items()):
        drawn = generate(policy.model, tokenizer, chat_prompts(tokenizer, [rows[flagged[j]]["question"]
                                                                          for j in positions]),
                         max_new_tokens=options.max_new_tokens, batch_size=options.batch_size,
                         num_return_sequences=count, temperature=temperature, top_p=options.top_p,
                         seed=options.seed + 1 + 7919 * (rounds - count), progress=progress,
                         expected_tokens=[records[flagged[j]]["initial"].get("program_tokens") or 0
                                          for j in positions])
        for j, texts in zip(positions, drawn, strict=True):
            samples[j] += texts
    flat = [(j, text) for j, texts in enumerate(samples) for text in texts]
    # without a threshold the PRM only orders candidates the sandbox and the quantity check leave tied at
    # the top: those alone are scored (below), as in the loop
    by_need = options.threshold is None
    checked = verifier.verify([rows[flagged[j]]["question"] for j, _ in flat], [t for _, t in flat], prm=not by_need)
    lengths = loop.token_counts(tokenizer, [t for _, t in flat])
    greedy = verifier.verify([rows[i]["question"] for i in flagged], [rows[i]["completion"] for i in flagged],
                             prm=not by_need)
    per: dict[int, list[tuple[str, Any, int]]] = {}
    for (j, text), v, n in zip(flat, checked, lengths, strict=True):
        per.setdefault(j, []).append((text, v, n))
    choice_all = {i: rows[i]["completion"] for i in range(len(rows))}
    choice_budget = dict(choice_all)
    spent_all = [0] * len(rows)
    spent_budget = [0] * len(rows)
    pools = []
    for j, i in enumerate(flagged):
        ranked = [(rows[i]["completion"], greedy[j], 0)] + per.get(j, [])
        budget = records[i]["extra_tokens"]
        fit, used = [ranked[0]], 0
        for cand in ranked[1:]:
            if used + cand[2] > budget:
                break
            used += cand[2]
            fit.append(cand)
        pools.append((ranked, fit, used))
    if by_need:
        tied = [(rows[i]["question"], v) for (ranked, fit, _), i in zip(pools, flagged, strict=True)
                for pool in (ranked, fit)
                for v in loop.top_tier([(v, loop.flag_step(v, options.threshold)) for _, v, _ in pool])]
        verifier.add_scores([q for q, _ in tied], [v for _, v in tied])
    for (ranked, fit, used), i in zip(pools, flagged, strict=True):
        choice_all[i] = _best(ranked, loop, options)
        choice_budget[i] = _best(fit, loop, options)
        spent_all[i], spent_budget[i] = sum(c[2] for c in ranked), used
    golds = [r["answer"] for r in rows]
    all_ok = ([s.correct is True for s in score_pot([choice_all[i] for i in range(len(rows))], golds, memo=memo)]
              if rows else [])
    budget_ok = ([s.correct is True for s in score_pot([choice_budget[i] for i in range(len(rows))], golds,
                                                       memo=memo)] if rows else [])
    reused_per_row = [0] * len(rows)
    for j, i in enumerate(flagged):
        reused_per_row[i] = reused[j]
        rows[i]["repair"]["best_of_correct"] = all_ok[i]
        rows[i]["repair"]["best_of_same_budget_correct"] = budget_ok[i]
        rows[i]["repair"]["best_of_reused_samples"] = reused[j]
    return {"all_ok": all_ok, "budget_ok": budget_ok, "spent_all": spent_all, "spent_budget": spent_budget,
            "reused": reused_per_row}


def _best(candidates: list[tuple[str, Any, int]], loop: Any, options: Any) -> str:
    """The candidate the verifier ranks highest (the earliest among equals: the greedy answer)."""
    ranks = [loop.version_rank(v, loop.flag_step(v, options.threshold)) for _, v, _ in candidates]
    best = max(range(len(candidates)), key=lambda k: (ranks[k], -k))
    return candidates[best][0]


def summary_line(m: dict[str, Any]) -> str:
    """One line for the console: pass@1 before -> with repair, fixed/broken, and the comparison."""
    line = (f"pass@1_repair={m['pass@1']:.3f} (from {m['pass@1_before']:.3f}; {m['verifier']}"
            f"{' signal only, no PRM' if m['verifier'] == 'sandbox' else ''}; attempted {m['attempted']}, "
            f"fixed {m['fixed']}, broke {m['broken']}, +{m['extra_tokens_per_problem']:.1f} tokens/problem)")
    if "best_of" in m:
        b, s = m["best_of"], m["best_of_same_budget"]
        line += (f"  best_of_{b['n']}={b['pass@1']:.3f} (+{b['extra_tokens_per_problem']:.1f} tokens)"
                 f"  same_budget={s['pass@1']:.3f} (+{s['extra_tokens_per_problem']:.1f})")
    return line
