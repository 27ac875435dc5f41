"""Supervised fine-tuning on verified PoT solutions, shared by every stage that fine-tunes a
policy on solutions: the sft stage, evolve's rejection-sampling rounds and revise's repaired
solutions. TRL's ``SFTTrainer`` in the prompt-completion conversational format (loss on the
completion only), LoRA from ``ModelConfig``."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.common.data import DataFormatError, load_problems, read_jsonl
from stages.common.modeling import peft_config
from stages.common.pot import build_messages, format_completion
from stages.harness.policy import synth_file

log = logging.getLogger("mathforge.supervised")


def load_solution_rows(sources: Sequence[str], *, seed: int) -> list[dict]:
    """Verified, correct solutions as ``{"id", "question", "completion"}`` rows, from synth (or
    evolve / revise) checkpoints (their ``verified.jsonl``), Verified-solution jsonl files, or
    ``arith:train:N[:seed]`` (the embedded task's reference programs)."""
    rows: list[dict] = []
    for src in sources:
        p = Path(src)
        if src.startswith("arith:"):
            rows += [{"id": r["id"], "question": r["question"], "completion": format_completion(r["program"])}
                     for r in load_problems(src, seed=seed)]
            continue
        path = synth_file(p) if p.is_dir() else p
        if not path.is_file():
            raise DataFormatError(src, None, None, "does not exist (expected a synth checkpoint, a jsonl file "
                                                   "or arith:train:N)")
        rows += [{"id": r["id"], "question": r["question"], "completion": r["completion"]}
                 for r in read_jsonl(path, "verified") if r["correct"]]
    if not rows:
        raise DataFormatError(",".join(sources), None, None, "holds no correct verified solution to train on")
    return rows


def to_prompt_completion(row: dict) -> dict:
    """A solution row as TRL's conversational prompt-completion example. A row may bring its own
    ``messages`` (the chat prompt, e.g. a revision request) instead of a plain ``question``."""
    prompt = row["messages"] if "messages" in row else build_messages(row["question"])
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": row["completion"]}]}


def train_supervised(ctx: Any, model: Any, tokenizer: Any, rows: Sequence[dict], training_args: Any,
                     model_args: Any = None, *, subdir: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Fine-tune ``model`` on ``rows`` with ``SFTTrainer`` (its loss from the full logits with the
    stage's ``lm_head_loss: logits``, ``stages.harness.logits_loss``); checkpoints go into the build's
    ``.partial`` folder (``subdir`` for one of several rounds) and an interrupted run resumes.
    Returns the trained model (LoRA merged when the stage loads plain weights next) and metrics."""
    import datasets  # deferred: heavy
    from trl import SFTTrainer  # deferred: heavy

    trainer_class = SFTTrainer
    if ctx.configs.args.lm_head_loss == "logits":
        from stages.harness.logits_loss import LogitsLossSFTTrainer  # deferred: imports trl

        trainer_class = LogitsLossSFTTrainer
    if subdir is not None:
        training_args = copy.copy(training_args)
    ctx.point_trainer(training_args, subdir)
    tokenizer.padding_side = "right"
    dataset = datasets.Dataset.from_list([to_prompt_completion(r) for r in rows])
    t0 = time.perf_counter()
    trainer = trainer_class(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config(model_args) if model_args is not None else None)
    log.info("%d training rows tokenized in %.1fs", len(rows), time.perf_counter() - t0)
    metrics = ctx.train(trainer, subdir=subdir)
    metrics["train_rows"] = len(rows)
    tokenizer.padding_side = "left"
    return trainer.model, metrics
