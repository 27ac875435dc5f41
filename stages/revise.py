"""Revise stage: StepCo-style verify-then-revise on wrong solutions, then fine-tuning on the repairs.

Launch: ``accelerate launch --config_file accelerate_configs/cpu.yaml -m stages.revise --config
recipes/tiny/revise.yaml`` (or ``python -m stages.revise ...``). The latest policy revises wrong
solutions (sampled here from problems with gold answers, read from jsonl files, or the evolve
stage's discarded samples) with the loop of :mod:`stages.revise_lib.repair` (PRM step scores and a
sandbox run flag the step to rewrite; the steps before it are kept), the repairs are judged by the
gold, and the policy is fine-tuned on the repaired solutions and revision demonstrations. Writes
``revised.jsonl``, ``verified.jsonl`` and ``pairs.jsonl`` (for dpo) beside the policy; the harness
runs the lifecycle and the before/after pass@1 on each eval set.
"""

from __future__ import annotations

from stages.harness import cli
from stages.prm_lib.scorer import PRMScorer
from stages.revise_lib.stage import revise_stage

STAGE = revise_stage(scorer_factory=PRMScorer)


def main(argv: list[str] | None = None):
    return STAGE.run(argv)


if __name__ == "__main__":
    cli(STAGE)
