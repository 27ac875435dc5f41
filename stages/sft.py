"""SFT stage: TRL ``SFTTrainer`` on verified PoT solutions in chat format.

Launch: ``accelerate launch --config_file accelerate_configs/cpu.yaml -m stages.sft --config
recipes/tiny/sft.yaml`` (or ``python -m stages.sft ...``). Loss is on the completion only (the
prompt-completion conversational format); packing, LoRA/QLoRA, gradient checkpointing and bf16
come from the recipe. The harness (``stages.harness``) runs the lifecycle: versioned checkpoint,
skip / dry run / resume, and greedy PoT pass@1 on each eval set after training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, SFTConfig

from stages.harness import (
    Stage,
    StageConfigs,
    StageContext,
    StagePlan,
    StageResult,
    SupervisedTrainingArguments,
    cli,
)
from stages.harness.policy import input_files
from stages.harness.supervised import load_solution_rows, train_supervised


@dataclass
class SFTStageArguments(SupervisedTrainingArguments):
    train_data: list[str] = field(
        default_factory=lambda: ["arith:train:4000"],
        metadata={"help": "Training data: synth checkpoints (their verified.jsonl), Verified-solution jsonl "
                          "files, or 'arith:train:N[:seed]' (the embedded task's reference programs)."},
    )
    eval_before: bool = field(default=False, metadata={
        "help": "Also measure the parent's pass@1 before training (off: SFT's parent is usually a base model)."})


def prepare(configs: StageConfigs) -> StagePlan:
    args, training = configs.args, configs.training
    rows = load_solution_rows(args.train_data, seed=training.seed)
    if args.max_train_samples:
        rows = rows[: args.max_train_samples]
    return StagePlan(parent=configs.model.model_name_or_path, inputs=input_files(args.train_data),
                     details={"train_rows": len(rows), "trainer": type(training).__name__},
                     data={"rows": rows}, seed=training.seed)


def build(ctx: StageContext, plan: StagePlan) -> StageResult:
    model, metrics = train_supervised(ctx, ctx.policy.model, ctx.policy.tokenizer, plan.data["rows"],
                                      ctx.configs.training, ctx.configs.model)
    return StageResult(metrics, model)


STAGE = Stage("sft", (SFTStageArguments, SFTConfig, ModelConfig), prepare=prepare, build=build)


def main(argv: list[str] | None = None):
    return STAGE.run(argv)


if __name__ == "__main__":
    cli(STAGE)
