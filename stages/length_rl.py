"""Length-aware RL stage, the last of the pipeline: the GRPO machinery of :mod:`stages.rl_lib`
with a brevity coefficient that ramps over training and the length shapes of ``rewards/``
(Kimi-1.5 group-relative ``kimi_length``, DAPO soft overlong ``dapo_overlong``, ``cosine_length``),
from the latest policy checkpoint (``@latest_policy``).

Launch: ``accelerate launch --config_file accelerate_configs/cpu.yaml -m stages.length_rl --config
recipes/tiny/length_rl.yaml`` (or ``python -m stages.length_rl ...``). metrics.json reports the
parent's and the new policy's pass@1 and mean completion tokens on each eval set.
"""

from __future__ import annotations

from stages.harness import cli
from stages.prm_lib.scorer import PRMScorer
from stages.rl_lib.stage import rl_stage

STAGE = rl_stage("length_rl", scorer_factory=PRMScorer)


def main(argv: list[str] | None = None):
    return STAGE.run(argv)


if __name__ == "__main__":
    cli(STAGE)
