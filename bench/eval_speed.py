"""Wall time of the executed-PoT eval task against lighteval's CoT task: same model, same problems,
same run. Target: PoT / CoT <= 1.2 (running programs in the sandbox must not dominate evaluation).

    .venv/bin/python bench/eval_speed.py [--model runs/tiny/sft] [--source gsm8k:test] [--limit 100]
        [--max_new_tokens 128] [--reps 2] [--quick] [--check] [--json OUT.json]

Both tasks go through the whole runner path (lighteval Pipeline, ``eval.model.MathforgeModel``,
judging: the sandbox for PoT, math-verify extraction for CoT), with the same token budget and
batch size, greedy. A warm-up evaluation of both on two problems runs first (imports, sandbox
start). Each measurement alternates PoT and CoT; the median of ``--reps`` is reported, with the
split between generation and judging and the tokens generated, since the two prompts make the
model write different amounts. Without ``--model`` the newest ``runs/*/sft`` checkpoint is used,
else the untrained tiny model (which writes no programs: the sandbox then has nothing to run, and
the bench says so).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.offline import configure_offline  # noqa: E402

configure_offline()

TARGET = 1.2


def pick_model(explicit: str | None) -> tuple[str, str]:
    if explicit:
        return explicit, "given"
    from stages.common.checkpoint import latest_version  # noqa: PLC0415

    found = [v for d in Path("runs").glob("*/sft") if (v := latest_version(d))]
    if found:
        return str(max(found, key=lambda p: p.stat().st_mtime)), "newest runs/*/sft"
    from stages.common.modeling import materialize_parent  # noqa: PLC0415

    run_dir = Path(tempfile.mkdtemp(prefix="eval-speed-")) / "bench"
    return materialize_parent("tiny", run_dir).path, "untrained tiny (no runs/*/sft found)"


def measure(args, model, tok, mode: str, limit: int) -> dict:
    from eval import gsm8k as runner  # noqa: PLC0415
    from eval.metrics import JUDGE_SECONDS  # noqa: PLC0415

    ea = runner.EvalArguments(model=args.model, eval_sets=[args.source], task=[mode], limit=limit,
                              max_new_tokens=args.max_new_tokens, cot_max_new_tokens=args.max_new_tokens,
                              batch_size=args.batch_size, dtype="float32")
    JUDGE_SECONDS.clear()
    t0 = time.perf_counter()
    metrics, files, timings = runner.evaluate(ea, model, tok)
    wall = time.perf_counter() - t0
    rows = next(iter(files.values()))
    return {"wall_s": wall, "generate_s": sum(t["wall_s"] for t in timings),
            "judge_s": sum(t["judge_s"] for t in timings), "pass@1": metrics[args.source][mode]["pass@1"],
            "completion_tokens": sum(r["n_tokens"] for r in rows),
            "with_program": sum(r.get("status") not in ("no_code", "no_answer") for r in rows) / len(rows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--source", default="gsm8k:test")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--max_new_tokens", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=50)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="20 problems, one repetition (a smoke run)")
    ap.add_argument("--check", action="store_true", help=f"exit 1 when PoT/CoT > {TARGET}")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    if args.quick:
        args.limit, args.reps = min(args.limit, 20), 1
    args.model, origin = pick_model(args.model)

    from eval.gsm8k import EvalArguments, init_state, load_model  # noqa: PLC0415
    from eval.results import model_identity  # noqa: PLC0415

    init_state()
    path = model_identity(args.model)["path"]  # a stage folder resolves to its latest version
    model, tok = load_model(EvalArguments(model=args.model, dtype="float32"), path)
    print(f"model: {args.model} ({origin}); problems: {args.source} first {args.limit}; "
          f"max_new_tokens {args.max_new_tokens}, batch {args.batch_size}, greedy; reps {args.reps}")
    for mode in ("pot", "cot"):  # warm-up: imports, sandbox start, math-verify first use
        measure(args, model, tok, mode, 2)
    runs: dict[str, list[dict]] = {"pot": [], "cot": []}
    for _ in range(args.reps):
        for mode in ("pot", "cot"):
            runs[mode].append(measure(args, model, tok, mode, args.limit))
    summary = {}
    for mode, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        summary[mode] = med
        print(f"{mode}: wall {med['wall_s']:.2f}s = generate {med['generate_s']:.2f}s + judge {med['judge_s']:.2f}s "
              f"+ other {med['wall_s'] - med['generate_s'] - med['judge_s']:.2f}s; "
              f"{med['completion_tokens']:.0f} completion tokens; answer/program present in "
              f"{100 * med['with_program']:.0f}%; pass@1 {med['pass@1']:.3f}")
    ratio = summary["pot"]["wall_s"] / summary["cot"]["wall_s"]
    judge_share = summary["pot"]["judge_s"] / summary["pot"]["wall_s"]
    print(f"PoT / CoT wall time: {ratio:.2f}x (target <= {TARGET}); sandbox judging is "
          f"{100 * judge_share:.1f}% of the PoT task's wall time")
    if summary["pot"]["with_program"] == 0:
        print("note: the model wrote no program, so the sandbox ran nothing; pass --model <a trained checkpoint>")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "ratio": ratio, "target": TARGET,
                                               "judge_share": judge_share, **summary}, indent=2))
    return 1 if args.check and ratio > TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
