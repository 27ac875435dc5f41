"""Yield and wall time of the synth stage with the ``gsm8k-annotations`` teacher on GSM8K train.

    .venv/bin/python bench/synth_gsm8k.py [--quick] [--check] [--json PATH]

Runs ``python -m stages.synth`` as a fresh process (interpreter start, imports, conversion,
hygiene with 13-gram decontamination against GSM8K test, sandbox verification, writing the
checkpoint) on ``train.jsonl`` and reads its metrics. Baseline of the same run: the sandbox
executing as many trivial programs (``print(0)``), the floor any verification pays; the ratio
verification / baseline is what running real programs and comparing answers adds to it.

Targets (issue 5): yield >= 95% of the 7,473 problems, whole run < 120 s on two cores.
``--quick`` uses the first 1,000 problems (yield target only). ``--check`` exits 1 on a miss.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import ATMOST, REPO, Figure, finish, parser  # noqa: E402

from stages.common.data import gsm8k_dir  # noqa: E402

YIELD_TARGET = 0.95
WALL_TARGET_S = 120.0


def main() -> int:
    ap = parser(__doc__.split("\n\n")[0])
    args = ap.parse_args()
    data = gsm8k_dir()
    if data is None:
        return finish(args, "synth_gsm8k", [], skipped="GSM8K local copy not found (../shared/data/gsm8k or "
                                                         "$MATHFORGE_GSM8K_DIR)")
    train = data / "train.jsonl"
    n_limit = 1000 if args.quick else None
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        recipe = Path(tmp) / "synth.yaml"
        lines = [f"problems:\n  - {train}", "teachers:\n  - gsm8k-annotations", "decontaminate:\n  - gsm8k:test",
                 "seed: 0"]
        if n_limit:
            lines.append(f"max_problems: {n_limit}")
        recipe.write_text("\n".join(lines) + "\n")

        from sandbox import get_sandbox  # deferred: only once the data is there

        sb = get_sandbox()
        sb.run_many(["print(0)"])  # start the workers outside the timing
        n = n_limit or sum(1 for line in train.open() if line.strip())
        t0 = time.perf_counter()
        sb.run_many(["print(0)"] * n)
        baseline_s = time.perf_counter() - t0
        sb.close()

        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "stages.synth", "--config", str(recipe), "--run", "bench",
                               "--runs_dir", tmp], cwd=REPO, capture_output=True, text=True)
        wall_s = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return 1
        metrics = json.loads((Path(tmp) / "bench" / "synth" / "latest" / "metrics.json").read_text())
    t = metrics["teachers"]["gsm8k-annotations"]
    yield_all = metrics["problems_solved"] / metrics["problems"]["loaded"]
    print(f"problems: {metrics['problems']['loaded']} loaded, {metrics['problems']['after_hygiene']} after hygiene "
          f"{metrics['problems']['removed']}")
    print(f"verified: {metrics['problems_solved']} problems = {100 * yield_all:.2f}% of those loaded "
          f"({100 * metrics['yield']:.2f}% after hygiene); target >= {100 * YIELD_TARGET:.0f}%")
    print(f"unsolved, by reason: {metrics['rejections']}")
    print(f"data flow: {t['data_flow_links']} uses of earlier results as variables in {t['converted']} programs "
          f"({t['program_steps']} steps)")
    print(f"wall time, whole process: {wall_s:.1f} s (target < {WALL_TARGET_S:.0f} s; ratio {wall_s / WALL_TARGET_S:.2f})")
    print(f"  inside the stage: {metrics['wall_s']:.1f} s, of which sandbox verification {metrics['verify_s']:.1f} s")
    print(f"  baseline, sandbox running {n} trivial programs: {baseline_s:.1f} s; "
          f"verification / baseline = {metrics['verify_s'] / baseline_s:.2f}")
    figures = [
        Figure("yield (verified / loaded)", yield_all, "", target=YIELD_TARGET, target_of="value"),
        # --quick runs 1,000 problems: the wall-time target is for the whole train split
        Figure("whole run, wall time", wall_s, "s", target=None if args.quick else WALL_TARGET_S, direction=ATMOST,
               target_of="value"),
        Figure("verification vs trivial programs", metrics["verify_s"], "s", baseline_s,
               f"sandbox running {n} print(0)"),
    ]
    details = {"problems": metrics["problems"], "problems_solved": metrics["problems_solved"],
               "rejections": metrics["rejections"], "stage_wall_s": metrics["wall_s"],
               "verify_s": metrics["verify_s"], "baseline_s": baseline_s, "process_wall_s": wall_s}
    return finish(args, "synth_gsm8k", figures, details)


if __name__ == "__main__":
    raise SystemExit(main())
