"""The one stage lifecycle, written once for every stage.

    parse (TrlParser: recipe + command line)
    -> validate (the stage's ``prepare``: every input read and checked, nothing written)
    -> open the versioned checkpoint (parent resolved and its files verified; the stage's lock taken)
    -> skip (a complete version with the same parent, config and data) or dry run (print the plan)
    -> point the trainer at the checkpoint's folders and resume from its last trainer checkpoint
    -> build and train (the stage's ``build``)
    -> save -> evaluate (policy stages: greedy PoT pass@1 per eval set, before and after)
    -> finalize the manifest (metrics, file inventory, written last) and publish ``vN``

A stage supplies a :class:`Stage`: its config dataclasses, a ``prepare`` function (validation and
inputs, returning a :class:`StagePlan`) and a ``build`` function (the work, returning a
:class:`StageResult`). Nothing of the lifecycle is written in a stage module.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.common.checkpoint import (
    CheckpointError,
    Parent,
    StageLock,
    checkpoint_key,
    open_stage,
    resolve_policy,
    stage_ref,
)
from stages.common.config import ConfigError, list_option, parse_config, resolved_config
from stages.common.data import DataFormatError, load_problems, write_json, write_jsonl
from stages.common.memory import check_memory_plan, flat_values
from stages.common.modeling import check_device_support, full_state_dict, materialize_parent
from stages.harness.arguments import PolicyTrainingArguments
from stages.harness.policy import (
    Policy,
    check_golds,
    eval_deltas,
    evaluate_policy,
    input_files,
    load_policy,
    parent_eval,
    save_policy,
)

log = logging.getLogger("mathforge")

# What a user can get wrong (a recipe, a data row, a parent): one line and exit 2, no traceback.
USER_ERRORS = (ConfigError, DataFormatError, CheckpointError)


@dataclass
class StageConfigs:
    """The parsed dataclasses of a stage: its own arguments, the trainer config it wraps (a TRL or
    transformers ``TrainingArguments``; None for synth) and ``trl.ModelConfig`` (None for synth)."""

    args: Any
    training: Any = None
    model: Any = None

    @classmethod
    def of(cls, parsed: tuple) -> StageConfigs:
        return cls(*parsed)

    def all(self) -> tuple:
        return tuple(c for c in (self.args, self.training, self.model) if c is not None)


@dataclass
class StagePlan:
    """What ``prepare`` found: the parent, the input files whose hashes identify the build, what
    the dry run prints, and the validated data ``build`` works on."""

    parent: str | None
    inputs: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    extra_config: dict[str, Any] = field(default_factory=dict)  # also identifies the build (e.g. resolved rewards)
    seed: int = 0


@dataclass
class StageResult:
    """What ``build`` returns: its metrics and, for a policy stage, the trained model (the harness
    saves and evaluates it)."""

    metrics: dict[str, Any] = field(default_factory=dict)
    model: Any = None


@dataclass(frozen=True)
class Stage:
    """A stage: its name, config dataclasses, ``prepare(configs) -> StagePlan`` and
    ``build(ctx, plan) -> StageResult``. A stage whose arguments are
    :class:`~stages.harness.policy.PolicyTrainingArguments` trains a policy: the harness loads the
    parent policy (``ctx.policy``), evaluates it before (``eval_before``), saves what ``build``
    returns and evaluates it after."""

    name: str
    config_types: tuple[type, ...]
    prepare: Callable[[StageConfigs], StagePlan]
    build: Callable[[StageContext, StagePlan], StageResult]

    def run(self, argv: list[str] | None = None) -> Path | None:
        return run_stage(self, argv)


def setup_logging() -> None:
    from accelerate import PartialState  # deferred: accelerate imports torch

    level = logging.INFO if PartialState().is_main_process else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s [%(name)s] %(message)s", stream=sys.stderr,
                        force=True)
    import transformers  # deferred: heavy

    transformers.utils.logging.set_verbosity_warning()


class StageContext:
    """One stage build: configs, parent, checkpoint folder, lock, the loaded policy (policy stages),
    and the outputs the build writes."""

    def __init__(self, stage: str, configs: StageConfigs, plan: StagePlan):
        from accelerate import PartialState  # deferred: accelerate imports torch

        self.state = PartialState()
        self.stage = stage
        self.configs = configs
        self.args = configs.args
        self.plan = plan
        self.run_dir = self.args.run_dir
        self.seed = plan.seed
        self.policy: Policy | None = None
        self._lock: StageLock | None = None
        self._log_history: list[dict] = []
        self.trainer: Any = None  # the last trainer ctx.train ran: its model is what a policy stage saves
        dry_run = bool(self.args.dry_run)
        self.parent: Parent | None = materialize_parent(
            plan.parent, self.run_dir, is_main=self.state.is_main_process, seed=plan.seed, dry_run=dry_run,
        ) if plan.parent else None
        config = resolved_config(*configs.all(), extra={"world_size": self.state.num_processes, **plan.extra_config})
        self.key = checkpoint_key(config=config, parent=self.parent, inputs=[str(p) for p in plan.inputs],
                                  seed=plan.seed)
        if dry_run:
            self.ckpt = open_stage(self.run_dir, stage, self.key, is_main=False)
            return
        if self.state.is_main_process:
            self._lock = StageLock(self.run_dir / stage, timeout_s=self.args.lock_timeout_s, label=stage).acquire()
            self.ckpt = open_stage(self.run_dir, stage, self.key, is_main=True)
        self.state.wait_for_everyone()
        if not self.state.is_main_process:
            self.ckpt = open_stage(self.run_dir, stage, self.key, is_main=False)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- where things go ---------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def done(self) -> bool:
        return self.ckpt.status == "done"

    @property
    def work_dir(self) -> Path:
        return self.ckpt.work_dir

    @property
    def trainer_dir(self) -> Path:
        return self.ckpt.trainer_dir

    @property
    def run_name(self) -> str:
        return f"{self.args.run}/{self.stage}/v{self.ckpt.version}"

    def point_trainer(self, training_args: Any, subdir: str | None = None) -> None:
        """Send a trainer's checkpoints and logs into this build's ``.partial`` folder (a sub-folder
        per training round when a stage trains several times) and name its run."""
        folder = self.trainer_dir / subdir if subdir else self.trainer_dir
        training_args.output_dir = str(folder)
        training_args.run_name = self.run_name + (f"/{subdir}" if subdir else "")
        training_args.logging_dir = str(folder / "logs")

    def resume_checkpoint(self, subdir: str | None = None) -> str | None:
        """The trainer checkpoint to resume from: the recipe's ``resume_from_checkpoint`` when it
        names a folder, else the newest one inside this build's ``.partial`` folder."""
        explicit = getattr(self.configs.training, "resume_from_checkpoint", None)
        if explicit not in (None, "", "true", "True", True):
            return str(explicit)
        return self.ckpt.last_trainer_checkpoint(subdir)

    def train(self, trainer: Any, *, subdir: str | None = None) -> dict[str, Any]:
        """Run ``trainer.train`` (resuming an interrupted build), timed; returns its metrics with
        wall time and, when counted, tokens per second. The log history goes into the checkpoint."""
        resume = self.resume_checkpoint(subdir)
        if resume:
            log.info("resuming from %s", resume)
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume)
        wall = time.perf_counter() - t0
        metrics: dict[str, Any] = {"train": dict(result.metrics), "train_wall_s": round(wall, 3)}
        tokens = getattr(trainer.state, "num_input_tokens_seen", 0)
        if tokens:
            metrics["train_tokens"] = tokens
            metrics["train_tokens_per_s"] = tokens / wall if wall else None
        self._log_history += [{**row, **({"round": subdir} if subdir else {})} for row in trainer.state.log_history]
        self.trainer = trainer
        return metrics

    # -- outputs ----------------------------------------------------------------------------

    def write_jsonl(self, name: str, rows) -> Path:
        path = self.ckpt.partial_dir / name
        if self.is_main:
            write_jsonl(path, rows)
        return path

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.ckpt.partial_dir / name
        if self.is_main:
            write_json(path, obj)
        return path

    def finalize(self, metrics: dict) -> Path:
        """Write metrics and the manifest (last) and publish the version (main process only)."""
        if self._log_history:
            self.write_json("log_history.json", self._log_history)
        self.state.wait_for_everyone()
        if self.is_main:
            final = self.ckpt.finalize(metrics=metrics)
            print(f"[{self.stage}] wrote {final}")
        self.state.wait_for_everyone()
        self.ckpt.status = "done"
        return self.ckpt.final_dir

    def plan_json(self, **details: Any) -> dict:
        """The dry-run plan: what would be read and written."""
        import torch  # deferred: heavy

        return {
            "stage": self.stage,
            "action": {"done": "skip (complete version exists)", "resume": "resume", "new": "build"}[self.ckpt.status],
            "would_write": str(self.ckpt.final_dir),
            "parent": self.parent.to_json() if self.parent else None,
            "config_sha256": self.key["config_sha256"],
            "inputs": self.key["inputs"],
            "seed": self.seed,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "world_size": self.state.num_processes,
            **details,
        }


# ---------------------------------------------------------------------------------------------
# The lifecycle


def _prepare_policy_stage(configs: StageConfigs, stage: str) -> dict[str, list[dict]]:
    """What every policy-training stage checks before its own ``prepare``: a parent model, the
    run references in its data options, and its eval sets (read and validated now)."""
    args, model_args = configs.args, configs.model
    if not model_args.model_name_or_path:
        raise ConfigError("model_name_or_path is required (@latest_policy, @<stage>, a checkpoint, a folder, a hub "
                          "id or 'tiny')")
    model_args.model_name_or_path = resolve_policy(model_args.model_name_or_path, args.run_dir, stage)
    args.train_data = [stage_ref(s, args.run_dir) for s in args.train_data]
    args.eval_data = [stage_ref(s, args.run_dir) for s in list_option(args.eval_data)]
    seed = getattr(configs.training, "seed", 0)
    eval_sets = {src: load_problems(src, seed=seed) for src in args.eval_data}
    check_golds(eval_sets)
    return eval_sets


def run_stage(stage: Stage, argv: list[str] | None = None) -> Path | None:
    """Run ``stage`` through the lifecycle; returns the checkpoint folder (None for a dry run)."""
    configs = StageConfigs.of(parse_config(stage.config_types, argv, prog=f"stages.{stage.name}"))
    setup_logging()
    if configs.model is not None:  # a GPU-only setting on a machine without one: one line, before any work
        check_device_support(configs.model, configs.training)
    trains_policy = isinstance(configs.args, PolicyTrainingArguments)
    eval_sets = _prepare_policy_stage(configs, stage.name) if trains_policy else {}
    plan = stage.prepare(configs)
    if trains_policy:
        plan.inputs = list(dict.fromkeys([*plan.inputs, *input_files(configs.args.eval_data)]))
    ctx = StageContext(stage.name, configs, plan)
    try:
        if ctx.done:
            if ctx.is_main:
                print(f"[{stage.name}] already complete: {ctx.ckpt.final_dir} (same parent, config and data); "
                      "skipping")
            return ctx.ckpt.final_dir
        if configs.args.dry_run:
            if ctx.is_main:
                eval_counts = {src: len(rows) for src, rows in eval_sets.items()}
                print(json.dumps({"dry_run": True, **ctx.plan_json(**plan.details, **(
                    {"eval_sets": eval_counts, "use_peft": configs.model.use_peft} if trains_policy else {}))},
                    indent=2, default=str))
            return None
        if configs.training is not None:
            ctx.point_trainer(configs.training)
        if configs.model is not None and ctx.parent is not None:  # warns (naming the knobs) when it cannot fit
            check_memory_plan(stage.name, flat_values(*configs.all()), ctx.parent.path)
        if not trains_policy:
            result = stage.build(ctx, plan)
            return ctx.finalize(result.metrics)
        return _build_policy(stage, ctx, plan, eval_sets)
    finally:
        ctx.close()


def _build_policy(stage: Stage, ctx: StageContext, plan: StagePlan, eval_sets: dict[str, list[dict]]) -> Path:
    args = ctx.args
    ctx.policy = load_policy(ctx.parent.path, ctx.configs.model)
    metrics: dict[str, Any] = {}
    if eval_sets and args.eval_before:
        reused = parent_eval(ctx.parent.manifest.get("metrics") if ctx.parent.manifest else None, eval_sets, args)
        if reused is not None:
            log.info("parent pass@1: the parent's own measurement on the same problems and decoding (%s)",
                     ", ".join(f"{s} {100 * m['pass@1']:.1f}%" for s, m in reused.items()))
            metrics["eval_before"] = reused
        else:
            metrics["eval_before"], _ = evaluate_policy(ctx.policy, eval_sets, args, label="parent")
    result = stage.build(ctx, plan)
    metrics.update(result.metrics)
    model = result.model if result.model is not None else ctx.policy.model
    trained = Policy(model, ctx.policy.tokenizer)
    # every rank: a model sharded by FSDP or ZeRO-3 is gathered here (None when it is whole)
    state_dict = full_state_dict(ctx.trainer) if ctx.trainer is not None and model is ctx.trainer.model else None
    if ctx.is_main:
        save_policy(trained, ctx.work_dir, args.export_merged, state_dict=state_dict)
    if eval_sets:
        metrics["eval"], details = evaluate_policy(trained, eval_sets, args, label=ctx.stage)
        ctx.write_jsonl("eval_details.jsonl", details)
        if "eval_before" in metrics:
            metrics["eval_delta"] = eval_deltas(metrics["eval_before"], metrics["eval"])
    return ctx.finalize(metrics)


def cli(stage: Stage, commands: dict[str, Callable[[list[str]], int]] | None = None) -> None:
    """Run ``stage`` as a command (or one of its extra ``commands``, named by the first argument,
    e.g. ``python -m stages.prm score ...``): a user error (bad recipe, bad data row, unusable
    parent) prints one clear line and exits 2 instead of a traceback."""
    argv = sys.argv[1:]
    try:
        if argv and commands and argv[0] in commands:
            sys.exit(commands[argv[0]](argv[1:]))
        stage.run(argv)
    except USER_ERRORS as e:
        print(f"stages.{stage.name}: error: {e}", file=sys.stderr)
        sys.exit(2)
