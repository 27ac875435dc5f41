"""Eval with repair against plain eval, same model, same eval sets, same run: the wall time, and pass@1
with repair against best-of-N at the same token budget.

    .venv/bin/python bench/eval_repair.py [--quick] [--check] [--json PATH] [--model runs/tiny/grpo]
        [--prm runs/tiny/prm] [--config recipes/tiny/eval.yaml] [--limit N] [--reps 2]

Both go through ``eval.gsm8k.evaluate`` (lighteval Pipeline, generation, the sandbox) with the
recipe's eval sets and decoding; the repair run adds the recipe's ``--repair`` options (loop and
comparison, on ``repair_sets``). The model and the PRM are loaded once, outside the timings; a
warm-up on two problems runs first. Each repetition alternates plain and repair; the medians are
reported, with the repair's own split (loop, best-of comparison) and what it did.

Figures: eval with repair / plain eval wall time (target <= 2.0: the repair loop and its
best-of-(1+R) comparison at most double what evaluating a checkpoint costs); per repaired set,
pass@1 with repair against best-of-(1+R) by the same verifier within the tokens the repair spent
(``best_of_same_budget``: is revising better than sampling again?) and against plain greedy
pass@1, reported without a target (what the policy and PRM give, not a property of the code).

The policy defaults to ``runs/tiny``'s latest policy (``./run_pipeline.sh``), the PRM to the
recipe's (``@prm``: that run's prm stage; without one the verifier is the sandbox alone); with no
policy checkpoint the benchmark reports ``skipped``. ``--quick``: the repaired sets only, their first
10 problems, one round (16 s on 2 cores at load 1.5; 90 s at load 5, when other torch jobs share the
cores); full: every eval set of the recipe in full (850 problems), ``--reps`` rounds (on the default
run's length_rl checkpoint about 8 s a round: 3.5 s plain, 4.2 s with repair; on sft about 14 s: 5.1 s plain, 9.0 s
with repair, docs/eval.md).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import ATMOST, REPO, Figure, finish, parser  # noqa: E402  (also puts the repo on sys.path)

from eval.offline import configure_offline  # noqa: E402

configure_offline()

NAME = "eval_repair"
TARGET = 2.0
QUICK_LIMIT, QUICK_REPS = 10, 1


def default_model() -> str | None:
    """``runs/tiny``'s newest policy checkpoint (dpo, revise, evolve, grpo, sft), or None."""
    from stages.common.checkpoint import LATEST_POLICY, CheckpointError, resolve_policy

    try:
        return resolve_policy(LATEST_POLICY, REPO / "runs" / "tiny")
    except CheckpointError:
        return None


def main() -> int:
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a policy checkpoint (default: runs/tiny's latest policy)")
    ap.add_argument("--prm", default=None, help="a PRM checkpoint (default: the recipe's, '@prm' of the model's run)")
    ap.add_argument("--config", default=str(REPO / "recipes" / "tiny" / "eval.yaml"))
    ap.add_argument("--limit", type=int, default=None,
                    help=f"the first N problems of each set (default: all; --quick: {QUICK_LIMIT})")
    ap.add_argument("--reps", type=int, default=None,
                    help=f"rounds of plain and repair, the medians count (default 2; --quick: {QUICK_REPS})")
    args = ap.parse_args()
    if args.limit is None and args.quick:
        args.limit = QUICK_LIMIT
    if args.reps is None:
        args.reps = QUICK_REPS if args.quick else 2

    model_spec = args.model or default_model()
    if model_spec is None:
        return finish(args, NAME, [], skipped="no policy checkpoint in runs/tiny: run ./run_pipeline.sh first, "
                                              "or pass --model")

    from eval import gsm8k as runner  # deferred: after configure_offline
    from eval.hooks import StageUnavailable, load_prm, load_repair, resolve_prm  # deferred: as above
    from eval.results import model_identity  # deferred: after configure_offline

    overrides = ["--config", args.config, "--model", model_spec, "--repair", "true"]
    if args.prm:
        overrides += ["--prm", args.prm]
    repair = runner.parse_args(overrides)
    if args.quick:  # the sets without repair add the same seconds to both sides: leave them out
        repaired = repair.repair_sets or repair.eval_sets
        repair = dataclasses.replace(repair, eval_sets=[s for s in repair.eval_sets if s in repaired])
    plain = dataclasses.replace(repair, repair=False, prm=None)
    runner.init_state()
    identity = model_identity(model_spec)
    try:
        prm_path = resolve_prm(repair.prm, identity) if repair.prm else None
    except StageUnavailable as e:
        raise SystemExit(f"{NAME}: {e}") from e
    model, tokenizer = runner.load_model(repair, identity["path"])
    prm = load_prm(prm_path) if prm_path else None
    loop = load_repair()
    print(f"model: {model_spec}; PRM: {prm_path or 'none (sandbox verifier)'}; sets: {', '.join(repair.eval_sets)} "
          f"(repaired: {', '.join(repair.repair_sets or repair.eval_sets)}); problems per set: "
          f"{args.limit or 'all'}; rounds: {args.reps}", flush=True)

    def run(config, limit):
        config.limit = limit
        t0 = time.perf_counter()
        metrics, _, _ = runner.evaluate(config, model, tokenizer, repair_loop=loop if config.repair else None,
                                        prm=prm if config.repair else None)
        return time.perf_counter() - t0, metrics

    run(plain, 2)  # warm-up: imports, sandbox start, first generation
    run(repair, 2)
    walls: dict[str, list[float]] = {"plain": [], "repair": []}
    last: dict = {}
    for rep in range(args.reps):
        for kind in (("plain", "repair") if rep % 2 == 0 else ("repair", "plain")):
            wall, metrics = run(plain if kind == "plain" else repair, args.limit)
            walls[kind].append(wall)
            if kind == "repair":
                last = metrics
        print(f"round {rep + 1}/{args.reps}: plain {walls['plain'][-1]:.1f} s, with repair {walls['repair'][-1]:.1f} s",
              flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}

    figures = [Figure("eval with repair vs plain eval", med["repair"], "s", med["plain"], "plain eval", target=TARGET,
                      direction=ATMOST)]
    sets = {}
    for source, modes in last.items():
        rep = (modes.get("pot") or {}).get("repair")
        if not rep:
            continue
        same_budget = (rep.get("best_of_same_budget") or {}).get("pass@1")
        sets[source] = {k: rep.get(k) for k in ("n", "pass@1_before", "pass@1", "attempted", "fixed", "broken",
                                                "extra_tokens_per_problem", "wall_s", "best_of_wall_s")}
        sets[source]["best_of"] = (rep.get("best_of") or {}).get("pass@1")
        sets[source]["best_of_same_budget"] = same_budget
        sets[source]["best_of_same_budget_extra_tokens"] = (rep.get("best_of_same_budget") or {}).get(
            "extra_tokens_per_problem")
        if same_budget is not None:
            figures.append(Figure(f"pass@1 repair vs best-of same budget, {source}", rep["pass@1"], "pass@1",
                                  same_budget, "best-of-(1+R), same tokens"))
        figures.append(Figure(f"pass@1 repair vs greedy, {source}", rep["pass@1"], "pass@1", rep["pass@1_before"],
                              "greedy"))
    details = {"model": model_spec, "prm": prm_path, "verifier": "prm+sandbox" if prm else "sandbox",
               "config": args.config, "eval_sets": repair.eval_sets, "limit": args.limit, "reps": args.reps,
               "walls_s": walls, "plain_s": round(med["plain"], 2), "repair_s": round(med["repair"], 2), "sets": sets}
    print(json.dumps(details, indent=2))
    return finish(args, NAME, figures, details)


if __name__ == "__main__":
    sys.exit(main())
