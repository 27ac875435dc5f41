"""SFT stage: TRL ``SFTTrainer`` on verified PoT solutions in chat format.

Launch: ``accelerate launch --config_file accelerate_configs/cpu.yaml -m stages.sft --config
recipes/tiny/sft.yaml`` (or ``python -m stages.sft ...``). Loss is on the completion only (the
prompt-completion conversational format); packing, LoRA/QLoRA, gradient checkpointing and bf16
come from the recipe. After training the stage measures greedy PoT pass@1 on held-out problems,
executed in the sandbox, and writes a versioned checkpoint (model, tokenizer, manifest, metrics,
eval details).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from stages.common.checkpoint import stage_ref
from stages.common.data import DataFormatError, load_problems, read_jsonl
from stages.common.pot import build_messages, format_completion
from stages.common.stage import StageArguments, StageContext, cli, setup_logging

log = logging.getLogger("mathforge.sft")


@dataclass
class SFTStageArguments(StageArguments):
    train_data: list[str] = field(
        default_factory=lambda: ["arith:train:4000"],
        metadata={"help": "Training data: synth checkpoints (their verified.jsonl), Verified-solution jsonl "
                          "files, or 'arith:train:N[:seed]' (the embedded task's reference programs)."},
    )
    eval_data: list[str] = field(
        default_factory=lambda: ["arith:test:500"],
        metadata={"help": "Problem sources for the after-training pass@1 (arith:..., gsm8k:test[:n], a jsonl; "
                          "'none' for no evaluation)."},
    )
    eval_max_new_tokens: int = field(default=160, metadata={"help": "Generation budget of the pass@1 eval."})
    eval_batch_size: int = field(default=64, metadata={"help": "Generation batch size of the pass@1 eval."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training rows."})
    export_merged: bool = field(default=False, metadata={"help": "With LoRA, also save merged full weights."})


def _input_files(sources: list[str]) -> list[str]:
    files = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files.append(str(_synth_file(p)))
        elif p.is_file():
            files.append(str(p))
    return files


def _synth_file(folder: Path) -> Path:
    from stages.common.checkpoint import resolve_parent  # noqa: PLC0415

    parent = resolve_parent(str(folder))
    path = Path(parent.path) / "verified.jsonl"
    if not path.is_file():
        raise DataFormatError(folder, None, None, "is a checkpoint without verified.jsonl (not a synth output)")
    return path


def load_sft_rows(sources: list[str], *, seed: int) -> list[dict]:
    """Verified, correct solutions as ``{"id", "question", "completion"}`` rows."""
    rows: list[dict] = []
    for src in sources:
        p = Path(src)
        if src.startswith("arith:"):
            rows += [{"id": r["id"], "question": r["question"], "completion": format_completion(r["program"])}
                     for r in load_problems(src, seed=seed)]
            continue
        path = _synth_file(p) if p.is_dir() else p
        if not path.is_file():
            raise DataFormatError(src, None, None, "does not exist (expected a synth checkpoint, a jsonl file "
                                                   "or arith:train:N)")
        rows += [{"id": r["id"], "question": r["question"], "completion": r["completion"]}
                 for r in read_jsonl(path, "verified") if r["correct"]]
    if not rows:
        raise DataFormatError(",".join(sources), None, None, "holds no correct verified solution to train on")
    return rows


def to_prompt_completion(row: dict) -> dict:
    return {"prompt": build_messages(row["question"]),
            "completion": [{"role": "assistant", "content": row["completion"]}]}


def main(argv: list[str] | None = None) -> Path | None:
    from trl import ModelConfig, SFTConfig  # noqa: PLC0415

    from stages.common.config import ConfigError, parse_config  # noqa: PLC0415

    args, cfg, model_args = parse_config((SFTStageArguments, SFTConfig, ModelConfig), argv, prog="stages.sft")
    setup_logging()
    if not model_args.model_name_or_path:
        raise ConfigError("model_name_or_path is required (a hub id, a folder, a checkpoint, @<stage> or 'tiny')")
    run_dir = Path(args.runs_dir) / args.run
    args.train_data = [stage_ref(s, run_dir) for s in args.train_data]
    args.eval_data = [stage_ref(s, run_dir) for s in args.eval_data if s.lower() != "none"]
    # read and validate all data before anything is written
    rows = load_sft_rows(args.train_data, seed=cfg.seed)
    if args.max_train_samples:
        rows = rows[: args.max_train_samples]
    eval_problems = [p for src in args.eval_data for p in load_problems(src, seed=cfg.seed)]
    inputs = _input_files(args.train_data) + _input_files(args.eval_data)
    ctx = StageContext("sft", args, (args, cfg, model_args), parent=model_args.model_name_or_path, inputs=inputs,
                       seed=cfg.seed)
    if ctx.done:
        ctx.report_skip()
        return ctx.ckpt.final_dir
    if args.dry_run:
        ctx.print_plan(train_rows=len(rows), eval_problems=len(eval_problems), trainer=type(cfg).__name__,
                       use_peft=model_args.use_peft)
        return None
    return train(ctx, args, cfg, model_args, rows, eval_problems)


def train(ctx: StageContext, args: SFTStageArguments, cfg, model_args, rows: list[dict], eval_problems) -> Path:
    import datasets  # noqa: PLC0415
    from trl import SFTTrainer  # noqa: PLC0415

    from stages.common.generation import evaluate_pot  # noqa: PLC0415
    from stages.common.modeling import (  # noqa: PLC0415
        full_state_dict,
        load_causal_lm,
        load_tokenizer,
        peft_config,
        save_policy,
    )

    cfg.output_dir = str(ctx.trainer_dir)
    cfg.run_name = ctx.run_name
    cfg.logging_dir = str(ctx.trainer_dir / "logs")
    tokenizer = load_tokenizer(ctx.parent.path, padding_side="right")
    model = load_causal_lm(ctx.parent.path, model_args)
    dataset = datasets.Dataset.from_list([to_prompt_completion(r) for r in rows])
    t_prep = time.perf_counter()
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config(model_args))
    log.info("%d training rows tokenized in %.1fs", len(rows), time.perf_counter() - t_prep)
    resume = ctx.resume_checkpoint()
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    train_s = time.perf_counter() - t0

    metrics: dict = {"train": {k: v for k, v in result.metrics.items()}, "train_rows": len(rows),
                     "train_wall_s": train_s}
    n_tokens = trainer.state.num_input_tokens_seen if cfg.include_num_input_tokens_seen else None
    if n_tokens:
        metrics["train_tokens"] = n_tokens
        metrics["train_tokens_per_s"] = n_tokens / train_s
    model = trainer.model
    state_dict = full_state_dict(trainer)  # every rank: FSDP / ZeRO-3 gather their shards here
    if ctx.is_main:
        save_policy(trainer.model, tokenizer, ctx.work_dir, args.export_merged, state_dict=state_dict)
    if eval_problems:
        tokenizer.padding_side = "left"
        t1 = time.perf_counter()
        eval_metrics, details = evaluate_pot(model, tokenizer, eval_problems, max_new_tokens=args.eval_max_new_tokens,
                                             batch_size=args.eval_batch_size)
        eval_metrics["wall_s"] = time.perf_counter() - t1
        metrics["eval"] = eval_metrics
        ctx.write_jsonl("eval_details.jsonl", details)
        if ctx.is_main:
            log.info("pass@1 on %d held-out problems: %.1f%%", eval_metrics["n"], 100 * eval_metrics["pass@1"])
    ctx.write_json("log_history.json", trainer.state.log_history)
    return ctx.finalize(metrics)


if __name__ == "__main__":
    cli(main, "stages.sft")
