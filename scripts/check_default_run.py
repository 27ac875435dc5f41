"""Check a finished default run (``./run_pipeline.sh`` on recipes/tiny) against what the default
recipe promises, and print every policy stage's figures on both eval sets.

    python scripts/check_default_run.py runs/tiny

.ci/run calls it after the full pipeline (the suite runs the pipeline on recipes/smoke only: the
default takes the suite's whole time budget). Exit 1 names each promise the run breaks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

USUAL, HARD = "arith:test:500", "arith:test:300:0:levels=4"
STAGES = ("synth", "sft", "prm", "grpo", "evolve", "revise", "dpo", "length_rl")
POLICY_STAGES = ("sft", "grpo", "evolve", "revise", "dpo", "length_rl")


def _metrics(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "latest" / "metrics.json").read_text())


def check(run: Path) -> list[str]:
    broken = []
    for stage in STAGES:
        manifest = run / stage / "latest" / "manifest.json"
        if not manifest.is_file() or json.loads(manifest.read_text()).get("status") != "complete":
            broken.append(f"{stage}: no complete checkpoint ({manifest})")
    if broken:
        return broken
    print(f"{'stage':<10} {'usual pass@1':>12} {'hard pass@1':>12} {'usual tokens':>12} {'hard tokens':>12}")
    for stage in POLICY_STAGES:
        evals = _metrics(run, stage)["eval"]
        usual, hard = evals[USUAL], evals[HARD]
        print(f"{stage:<10} {usual['pass@1']:>12.3f} {hard['pass@1']:>12.3f} "
              f"{usual['mean_completion_tokens']:>12.1f} {hard['mean_completion_tokens']:>12.1f}")
    sft = _metrics(run, "sft")["eval"]
    if sft[USUAL]["n"] != 500 or sft[HARD]["n"] != 300:
        broken.append(f"sft: eval sets of {sft[USUAL]['n']} and {sft[HARD]['n']} problems, not 500 and 300")
    if sft[USUAL]["pass@1"] < 0.90:
        broken.append(f"sft: usual split pass@1 {sft[USUAL]['pass@1']:.3f} < 0.90")
    if not 0.10 <= sft[HARD]["pass@1"] <= 0.70:
        broken.append(f"sft: hard split pass@1 {sft[HARD]['pass@1']:.3f} outside [0.10, 0.70] (solved only sometimes)")
    bon = _metrics(run, "prm")["best_of_n"]
    if not bon["prm_min"]["accuracy"] > bon["random_expected_accuracy"]:
        broken.append(f"prm: best-of-{bon.get('n')} pick {bon['prm_min']['accuracy']:.3f} does not beat a random pick "
                      f"{bon['random_expected_accuracy']:.3f}")
    if not (run / "report.html").is_file():
        broken.append(f"no report: {run / 'report.html'}")
    return broken


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    broken = check(Path(argv[0]))
    for line in broken:
        print(f"check_default_run: {line}", file=sys.stderr)
    print("check_default_run: " + ("FAILED" if broken else "ok"))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
