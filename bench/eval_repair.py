"""Wall time of eval with repair against plain eval: same model, same eval sets, same run. Target:
with repair / plain <= 2.0 (the repair loop and its best-of-(1+R) comparison at most double what
evaluating a checkpoint costs).

    .venv/bin/python bench/eval_repair.py --model runs/tiny/grpo [--prm runs/tiny/prm]
        [--config recipes/tiny/eval.yaml] [--reps 2] [--check] [--json OUT.json]

Both go through ``eval.gsm8k.evaluate`` (lighteval Pipeline, generation, the sandbox) with the
recipe's eval sets and decoding; the repair run adds the recipe's ``--repair`` options (loop and
comparison, on ``repair_sets``). The model and the PRM are loaded once, outside the timings; a
warm-up on two problems runs first. Each repetition alternates plain and repair; the medians are
reported, with the repair's own split (loop, best-of comparison) and what it did.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.offline import configure_offline  # noqa: E402

configure_offline()

TARGET = 2.0


def main() -> int:
    from eval import gsm8k as runner  # deferred: after configure_offline
    from eval.hooks import load_prm, load_repair, resolve_prm  # deferred: after configure_offline
    from eval.results import model_identity  # deferred: after configure_offline

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a policy checkpoint")
    ap.add_argument("--prm", default=None, help="a PRM checkpoint (default: the recipe's, '@prm' of the model's run)")
    ap.add_argument("--config", default="recipes/tiny/eval.yaml")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--check", action="store_true", help=f"exit 1 when repair / plain > {TARGET}")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    overrides = ["--config", args.config, "--model", args.model, "--repair", "true"]
    if args.prm:
        overrides += ["--prm", args.prm]
    repair = runner.parse_args(overrides)
    plain = dataclasses.replace(repair, repair=False, prm=None)
    identity = model_identity(args.model)

    prm_path = resolve_prm(repair.prm, identity) if repair.prm else None
    model, tokenizer = runner.load_model(repair, identity["path"])
    prm = load_prm(prm_path) if prm_path else None
    loop = load_repair()

    def run(config, limit=None):
        config.limit = limit
        t0 = time.perf_counter()
        metrics, _, _ = runner.evaluate(config, model, tokenizer, repair_loop=loop if config.repair else None,
                                        prm=prm if config.repair else None)
        return time.perf_counter() - t0, metrics

    run(plain, 2)
    run(repair, 2)
    walls: dict[str, list[float]] = {"plain": [], "repair": []}
    last = {}
    for _ in range(args.reps):
        walls["plain"].append(run(plain)[0])
        wall, last = run(repair)
        walls["repair"].append(wall)
    med = {k: statistics.median(v) for k, v in walls.items()}
    ratio = med["repair"] / med["plain"]
    sets = {}
    for source, modes in last.items():
        rep = (modes.get("pot") or {}).get("repair")
        if rep:
            sets[source] = {k: rep.get(k) for k in ("pass@1_before", "pass@1", "attempted", "fixed", "broken",
                                                    "extra_tokens_per_problem", "wall_s", "best_of_wall_s")}
            sets[source]["best_of"] = (rep.get("best_of") or {}).get("pass@1")
            sets[source]["best_of_same_budget"] = (rep.get("best_of_same_budget") or {}).get("pass@1")
    out = {"model": args.model, "prm": prm_path, "verifier": "prm+sandbox" if prm else "sandbox",
           "plain_s": round(med["plain"], 2), "repair_s": round(med["repair"], 2), "ratio": round(ratio, 3),
           "target": TARGET, "sets": sets}
    print(json.dumps(out, indent=2))
    print(f"eval with repair / plain eval: {ratio:.2f} (target <= {TARGET})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 1 if args.check and ratio > TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
