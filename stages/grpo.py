"""GRPO stage: TRL ``GRPOTrainer`` from the SFT checkpoint on PoT prompts with gold answers.

Launch: ``accelerate launch --config_file accelerate_configs/cpu.yaml -m stages.grpo --config
recipes/tiny/grpo.yaml`` (or ``python -m stages.grpo ...``). Rewards come from ``rewards/`` by name
with weights in the recipe (seed default: executed-program correctness, brevity -0.0002 per
token, the PRM bonus when a PRM checkpoint exists, and the format check). The machinery (step-time
split, zero-spread groups, before/after pass@1, versioned and resumable checkpoints) lives in
:mod:`stages.common.rl`, shared with ``length_rl``.
"""

from __future__ import annotations

from pathlib import Path

from stages.common.rl import run_rl_stage
from stages.common.stage import cli


def main(argv: list[str] | None = None) -> Path | None:
    return run_rl_stage("grpo", argv)


if __name__ == "__main__":
    cli(main, "stages.grpo")
