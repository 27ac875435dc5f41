"""DPO stage: TRL ``DPOTrainer`` toward concise, clean programs that stay correct.

Launch: ``accelerate launch --config_file accelerate_configs/cpu.yaml -m stages.dpo --config
recipes/tiny/dpo.yaml`` (or ``python -m stages.dpo ...``). Preference pairs, each recording its
kind: ``strip`` (a correct program against itself stripped of comments, docstrings, intermediate
prints, dead and redundant assignments, on the AST and checked in the sandbox), ``sampled`` (a
problem's shortest correct sample against its longest), ``correct_vs_wrong`` and ``revised`` (the
revise stage's repaired programs against the wrong originals); their mix is a recipe option. The
loss types and ``beta`` come from ``DPOConfig``; the parent policy is the frozen reference. The
machinery is :mod:`stages.dpo_lib`; the harness runs the lifecycle and the before/after pass@1
and completion tokens on each eval set.
"""

from __future__ import annotations

from trl import DPOConfig, ModelConfig

from stages.dpo_lib.stage import DPOStageArguments, build, prepare
from stages.harness import Stage, cli

STAGE = Stage("dpo", (DPOStageArguments, DPOConfig, ModelConfig), prepare=prepare, build=build)


def main(argv: list[str] | None = None):
    return STAGE.run(argv)


if __name__ == "__main__":
    cli(STAGE)
