"""The argument dataclasses the stage harness knows: those of every stage, and those every
policy-training stage shares (sft, grpo, length_rl, evolve, revise, dpo)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LM_HEAD_LOSSES = ("fused", "logits")  # SupervisedTrainingArguments.lm_head_loss


@dataclass
class StageArguments:
    """Arguments every stage takes (besides the TRL config and ``ModelConfig`` it wraps)."""

    run: str = field(default="default", metadata={"help": "Run name: checkpoints go to <runs_dir>/<run>/<stage>/vN."})
    runs_dir: str = field(default="runs", metadata={"help": "Folder holding all runs."})
    dry_run: bool = field(
        default=False,
        metadata={"help": "Check the config, data, parent and device; print the plan; train and write nothing."},
    )
    lock_timeout_s: float | None = field(default=None, metadata={
        "help": "When another process is building this stage of this run, wait at most this long for it "
                "(default: as long as it takes), then stop with an error naming the holder."})

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run


@dataclass
class PolicyTrainingArguments(StageArguments):
    """Arguments of every stage that trains a policy. The harness loads the parent policy
    (``model_name_or_path``), measures greedy PoT pass@1 on each eval set before (``eval_before``)
    and after training, and saves the trained policy."""

    train_data: list[str] = field(default_factory=list, metadata={
        "help": "Training data sources (what each stage reads: see its docs); '@<stage>' names this run's "
                "checkpoint of that stage."})
    eval_data: list[str] = field(
        default_factory=lambda: ["arith:test:500"],
        metadata={"help": "Problem sources for greedy PoT pass@1, each reported on its own (arith:..., "
                          "gsm8k:test[:n], a jsonl; 'none' for no evaluation)."},
    )
    eval_max_new_tokens: int = field(default=160, metadata={"help": "Generation budget of the pass@1 eval."})
    eval_batch_size: int = field(default=64, metadata={"help": "Generation batch size of the pass@1 eval."})
    eval_before: bool = field(default=True, metadata={"help": "Also measure the parent's pass@1 before training."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training rows."})
    export_merged: bool = field(default=False, metadata={"help": "With LoRA, also save merged full weights."})


@dataclass
class SupervisedTrainingArguments(PolicyTrainingArguments):
    """Arguments of the stages that fine-tune a policy on solutions with ``SFTTrainer`` (sft,
    evolve's rounds, revise's training): ``stages.harness.supervised.train_supervised``."""

    lm_head_loss: str = field(default="fused", metadata={
        "help": "How the loss reaches the vocabulary. fused: TRL's tiled LM head, which never builds the full "
                "logits (the choice for a large vocabulary, e.g. Qwen's 151k). logits: the loss from the model's "
                "logits (stages/harness/logits_loss.py), a third less time per step on CPU for a small vocabulary "
                "(recipes/tiny). Same loss, same logged metrics.",
        "choices": list(LM_HEAD_LOSSES)})

    def __post_init__(self) -> None:
        # argparse checks `choices` on the command line only; a recipe's value reaches the field unchecked
        if self.lm_head_loss not in LM_HEAD_LOSSES:
            raise ValueError(f"lm_head_loss must be one of {list(LM_HEAD_LOSSES)}, got {self.lm_head_loss!r}")
