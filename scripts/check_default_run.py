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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: eval.results

from eval.results import read_results  # noqa: E402

USUAL, HARD = "arith:test:500", "arith:test:300:0:levels=4"
SPLIT_NAMES = {USUAL: "usual", HARD: "hard"}
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
    broken += check_learning(run)
    broken += check_brevity(run)
    broken += check_repair(run)
    bon = _metrics(run, "prm")["best_of_n"]
    if not bon["prm_min"]["accuracy"] > bon["random_expected_accuracy"]:
        broken.append(f"prm: best-of-{bon.get('n')} pick {bon['prm_min']['accuracy']:.3f} does not beat a random pick "
                      f"{bon['random_expected_accuracy']:.3f}")
    if not (run / "report.html").is_file():
        broken.append(f"no report: {run / 'report.html'}")
    return broken


def check_learning(run: Path) -> list[str]:
    """grpo and evolve (issues 14 and 15) learn on the hard split without losing the usual one: grpo at least
    5 points of hard pass@1 over its parent (sft) with at most half of its groups without a spread in
    correctness on average, evolve at least 10 over its parent (grpo), each with usual pass@1 no more than 1
    point below its parent's."""
    broken = []
    for stage, parent, gain in (("grpo", "sft", 0.05), ("evolve", "grpo", 0.10)):
        metrics = _metrics(run, stage)
        now, before = metrics["eval"], _metrics(run, parent)["eval"]
        if now[HARD]["pass@1"] - before[HARD]["pass@1"] < gain - 1e-9:
            broken.append(f"{stage}: hard pass@1 {now[HARD]['pass@1']:.3f}, not {gain * 100:.0f} points over "
                          f"{parent}'s {before[HARD]['pass@1']:.3f}")
        broken += _points_lost(stage, parent, now, before, (USUAL,))
        share = (metrics.get("zero_spread") or {}).get("mean_share")
        if stage == "grpo" and (share is None or share >= 0.5):
            broken.append(f"grpo: zero-spread groups {share if share is None else format(share, '.0%')} "
                          "on average, not under 50%")
    return broken


def check_brevity(run: Path) -> list[str]:
    """dpo and length_rl (issues 17 and 14) make the programs shorter while staying right: dpo at least 15%
    fewer completion tokens on the usual split than its parent (issue 17), length_rl at least 20% fewer than
    its parent, dpo (issue 14; issue 17 asks 10%: the folded answer, the unchecked division and the
    answer's label left out, docs/rl.md), each with pass@1 no more than 1 point below its parent on both
    splits."""
    broken = []
    chain = (("dpo", "revise", 0.15), ("length_rl", "dpo", 0.20))
    for stage, parent, cut in chain:
        now, before = _metrics(run, stage)["eval"], _metrics(run, parent)["eval"]
        tokens, parent_tokens = now[USUAL]["mean_completion_tokens"], before[USUAL]["mean_completion_tokens"]
        if tokens > (1 - cut) * parent_tokens:
            broken.append(f"{stage}: usual split {tokens:.1f} tokens, not {cut:.0%} fewer than {parent}'s "
                          f"{parent_tokens:.1f}")
        broken += _points_lost(stage, parent, now, before, (USUAL, HARD))
    return broken


def _points_lost(stage: str, parent: str, now: dict, before: dict, splits: tuple[str, ...]) -> list[str]:
    """Each split of ``splits`` on which ``stage``'s pass@1 is more than 1 point below its parent's."""
    return [f"{stage}: {SPLIT_NAMES[name]} pass@1 {now[name]['pass@1']:.3f}, more than 1 point below "
            f"{parent}'s {before[name]['pass@1']:.3f}"
            for name in splits if before[name]["pass@1"] - now[name]["pass@1"] > 0.01 + 1e-9]


def _repair(run: Path, stage: str) -> dict[str, dict]:
    """The newest evaluation's pass@1 with repair per eval set (``eval.gsm8k --repair``)."""
    found = read_results(run / stage / "latest")
    if not found:
        return {}
    sets = found[-1].get("sets") or {}
    return {name: modes["pot"]["repair"] for name, modes in sets.items()
            if isinstance((modes.get("pot") or {}).get("repair"), dict)}


def check_repair(run: Path) -> list[str]:
    """Eval with repair (issue 16): on the usual split never below plain pass@1; at most 1% of the right
    answers broken on either split; on the hard split, where a policy is often wrong (plain pass@1 under
    0.7), at least 5 points gained."""
    broken = []
    print(f"\n{'stage':<10} {'set':<6} {'pass@1':>7} {'repair':>7} {'fixed':>6} {'broken':>6} {'best-of same budget':>20}")
    for stage in POLICY_STAGES:
        repaired = _repair(run, stage)
        if set(repaired) != {USUAL, HARD}:
            broken.append(f"{stage}: no eval with repair on both splits (found {sorted(repaired)})")
            continue
        for name, label in SPLIT_NAMES.items():
            m = repaired[name]
            same = (m.get("best_of_same_budget") or {}).get("pass@1")
            print(f"{stage:<10} {label:<6} {m['pass@1_before']:>7.3f} {m['pass@1']:>7.3f} {m['fixed']:>6} "
                  f"{m['broken']:>6} {same if same is None else format(same, '.3f'):>20}")
            if m["break_rate"] > 0.01:
                broken.append(f"{stage}: eval with repair broke {m['broken']} right answers on {label} "
                              f"({m['break_rate']:.1%} > 1%)")
        usual, hard = repaired[USUAL], repaired[HARD]
        if usual["pass@1"] < usual["pass@1_before"]:
            broken.append(f"{stage}: usual pass@1 with repair {usual['pass@1']:.3f} below plain {usual['pass@1_before']:.3f}")
        if hard["pass@1_before"] < 0.7 and hard["pass@1"] - hard["pass@1_before"] < 0.05:
            broken.append(f"{stage}: hard pass@1 with repair {hard['pass@1']:.3f}, under plain "
                          f"{hard['pass@1_before']:.3f} + 5 points")
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
