"""The stage harness: the one stage lifecycle (:mod:`stages.harness.lifecycle`), the arguments
every stage and every policy-training stage share (:mod:`stages.harness.arguments`), the policy
helpers and pass@1 measurement (:mod:`stages.harness.policy`) and supervised fine-tuning
(:mod:`stages.harness.supervised`).

Layer: above ``rewards`` (evaluation scores programs), below the per-stage libraries
(``stages/<stage>_lib``) and the launch modules (``stages/<stage>.py``)."""

from stages.harness.arguments import PolicyTrainingArguments, StageArguments, SupervisedTrainingArguments
from stages.harness.lifecycle import Stage, StageConfigs, StageContext, StagePlan, StageResult, cli, run_stage
from stages.harness.policy import Policy

__all__ = ["Policy", "PolicyTrainingArguments", "Stage", "StageArguments", "StageConfigs", "StageContext", "SupervisedTrainingArguments",
           "StagePlan", "StageResult", "cli", "run_stage"]
