"""Evolve stage: PRM-guided best-of-N self-evolution with shallow tree exploration, then
rejection-sampling fine-tuning, for ``rounds`` rounds.

Launch: ``accelerate launch --config_file accelerate_configs/cpu.yaml -m stages.evolve --config
recipes/tiny/evolve.yaml`` (or ``python -m stages.evolve ...``). The latest policy samples N
solutions per problem; the sandbox and the PRM (``@prm``, either PRM type) keep the correct,
well-scored ones; tree exploration branches from step prefixes of problems that kept nothing; the
policy is fine-tuned on what was kept. The machinery is :mod:`stages.evolve_lib`; the harness runs
the lifecycle and the before/after pass@1 on each eval set.
"""

from __future__ import annotations

from stages.evolve_lib.stage import evolve_stage
from stages.harness import cli
from stages.prm_lib.scorer import PRMScorer

STAGE = evolve_stage(scorer_factory=PRMScorer)


def main(argv: list[str] | None = None):
    return STAGE.run(argv)


if __name__ == "__main__":
    cli(STAGE)
