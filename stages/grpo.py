"""GRPO stage: TRL ``GRPOTrainer`` from the latest policy on PoT prompts with gold answers.

Launch: ``accelerate launch --config_file accelerate_configs/cpu.yaml -m stages.grpo --config
recipes/tiny/grpo.yaml`` (or ``python -m stages.grpo ...``). Rewards come from ``rewards/`` by name
with weights in the recipe (seed default: executed-program correctness, brevity -0.0002 per
token, the PRM bonus when a PRM checkpoint exists, and the format check). The machinery (rewards
wiring, step-time split, zero-spread groups) is :mod:`stages.rl_lib`, shared with ``length_rl``;
the harness runs the lifecycle and the before/after pass@1 on each eval set.
"""

from __future__ import annotations

from stages.harness import cli
from stages.prm_lib.scorer import PRMScorer
from stages.rl_lib.stage import rl_stage

STAGE = rl_stage("grpo", scorer_factory=PRMScorer)


def main(argv: list[str] | None = None):
    return STAGE.run(argv)


if __name__ == "__main__":
    cli(STAGE)
