"""Wall time of the executed-PoT eval task against lighteval's CoT task: same model, same problems,
same run. Target: PoT / CoT <= 1.2 (running programs in the sandbox must not dominate evaluation).

    .venv/bin/python bench/eval_speed.py [--quick] [--model runs/tiny/sft] [--source gsm8k:test] [--limit 100]
        [--max_new_tokens 128] [--batch_size 50] [--reps 3] [--check] [--json PATH]

Both tasks go through the whole runner path (lighteval Pipeline, ``eval.model.MathforgeModel``,
judging: the sandbox for PoT, math-verify extraction for CoT), with the same token budget and
batch size, greedy. A warm-up evaluation of both runs first (imports, sandbox start with its
background template warm-up, math-verify first use). Each round times PoT and CoT back to back, in
alternating order; the median of ``--reps`` rounds is reported, with the split between
generation, judging and the rest, the completion tokens and the longest completion: a batch decodes
until its longest completion ends, so with greedy decoding that one completion sets the batch's
generation time. Without ``--model`` the newest ``runs/*/sft`` checkpoint is used, else the
untrained tiny model (which writes no programs: the sandbox then has nothing to run, and the bench
says so). ``--quick``: the first 50 problems (one batch). Fewer would make the figure the ratio of two
single completions: on the first 20 GSM8K problems the tiny SFT model's longest PoT completion (a
degenerate 107-token program) against its longest CoT one (81 tokens) gives 1.18x, all of it decoding
steps at the same cost per step; on 50 and 100 problems, 0.98x and 0.90x.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Figure, finish, parser  # noqa: E402

from eval.offline import configure_offline  # noqa: E402

configure_offline()

TARGET = 1.2
MODES = ("pot", "cot")
_SCRATCH: list[tempfile.TemporaryDirectory] = []  # the untrained model's folder lives as long as the process


def pick_model(explicit: str | None) -> tuple[str, str]:
    if explicit:
        return explicit, "given"
    from stages.common.checkpoint import latest_version

    found = [v for d in Path("runs").glob("*/sft") if (v := latest_version(d))]
    if found:
        return str(max(found, key=lambda p: p.stat().st_mtime)), "newest runs/*/sft"
    from stages.common.modeling import materialize_parent

    scratch = tempfile.TemporaryDirectory(prefix="eval-speed-")  # removed when the process exits
    _SCRATCH.append(scratch)
    run_dir = Path(scratch.name) / "bench"
    return materialize_parent("tiny", run_dir).path, "untrained tiny (no runs/*/sft found)"


def measure(args, model, tok, mode: str, limit: int) -> dict:
    from eval import gsm8k as runner  # deferred: imports lighteval
    from eval.metrics import JUDGE_SECONDS

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
            "longest_completion": max(r["n_tokens"] for r in rows),
            "with_program": sum(r.get("status") not in ("no_code", "no_answer") for r in rows) / len(rows)}


def main() -> int:
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--source", default="gsm8k:test")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--max_new_tokens", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.limit = min(args.limit, 50)
    args.model, origin = pick_model(args.model)

    from eval.gsm8k import EvalArguments, init_state, load_model  # deferred: imports lighteval
    from eval.results import model_identity

    init_state()
    path = model_identity(args.model)["path"]  # a stage folder resolves to its latest version
    model, tok = load_model(EvalArguments(model=args.model, dtype="float32"), path)
    print(f"model: {args.model} ({origin}); problems: {args.source} first {args.limit}; "
          f"max_new_tokens {args.max_new_tokens}, batch {args.batch_size}, greedy; rounds {args.reps}")
    for mode in MODES:  # warm-up: imports, sandbox start, math-verify first use
        measure(args, model, tok, mode, args.limit)
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for rep in range(args.reps):
        for mode in (MODES if rep % 2 == 0 else MODES[::-1]):
            runs[mode].append(measure(args, model, tok, mode, args.limit))
        print(f"round {rep + 1}/{args.reps}: " + ", ".join(
            f"{mode} {runs[mode][-1]['wall_s']:.2f} s (generate {runs[mode][-1]['generate_s']:.2f} s)" for mode in MODES),
            flush=True)
    summary = {}
    for mode, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        summary[mode] = med
        print(f"{mode}: wall {med['wall_s']:.2f}s = generate {med['generate_s']:.2f}s + judge {med['judge_s']:.2f}s "
              f"+ other {med['wall_s'] - med['generate_s'] - med['judge_s']:.2f}s; "
              f"{med['completion_tokens']:.0f} completion tokens, longest {med['longest_completion']:.0f}; "
              f"answer/program present in {100 * med['with_program']:.0f}%; pass@1 {med['pass@1']:.3f}")
    ratio = summary["pot"]["wall_s"] / summary["cot"]["wall_s"]
    judge_share = summary["pot"]["judge_s"] / summary["pot"]["wall_s"]
    print(f"PoT / CoT wall time: {ratio:.2f}x (target <= {TARGET}); sandbox judging is "
          f"{100 * judge_share:.1f}% of the PoT task's wall time")
    note = None
    if summary["pot"]["with_program"] == 0:
        note = "the model wrote no program, so the sandbox ran nothing; pass --model <a trained checkpoint>"
        print(f"note: {note}")
    figures = [Figure("PoT vs CoT eval wall time", summary["pot"]["wall_s"], "s", summary["cot"]["wall_s"],
                      "CoT task", target=TARGET, direction="<=", note=note)]
    details = {"model": args.model, "model_origin": origin, "limit": args.limit, "reps": args.reps,
               "judge_share": judge_share, "median": summary, "runs": runs}
    return finish(args, "eval_speed", figures, details)


if __name__ == "__main__":
    sys.exit(main())
