"""What every stage's launch script shares: arguments common to all stages, and the
:class:`StageContext` that resolves the parent, finds or opens the versioned checkpoint, handles
``--dry_run``, skips a completed build, resumes an interrupted one, and finalizes the manifest.

A stage script stays thin (the TRL-script style): parse its dataclasses, open a context, train,
``ctx.finalize(metrics)``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.common.checkpoint import StageCheckpoint, checkpoint_key, open_stage
from stages.common.config import resolved_config
from stages.common.data import write_json, write_jsonl
from stages.common.modeling import materialize_parent

log = logging.getLogger("mathforge")


@dataclass
class StageArguments:
    """Arguments every stage takes (besides the TRL config and ``ModelConfig`` it wraps)."""

    run: str = field(default="default", metadata={"help": "Run name: checkpoints go to <runs_dir>/<run>/<stage>/vN."})
    runs_dir: str = field(default="runs", metadata={"help": "Folder holding all runs."})
    dry_run: bool = field(
        default=False,
        metadata={"help": "Check the config, data, parent and device; print the plan; train and write nothing."},
    )


def setup_logging() -> None:
    from accelerate import PartialState  # noqa: PLC0415

    level = logging.INFO if PartialState().is_main_process else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s [%(name)s] %(message)s", stream=sys.stderr,
                        force=True)
    import transformers  # noqa: PLC0415

    transformers.utils.logging.set_verbosity_warning()



class StageContext:
    """One stage build: parent, checkpoint folder, skip / resume / dry-run decisions, manifest."""

    def __init__(self, stage: str, args: StageArguments, configs: tuple, *, parent: str | None,
                 inputs: list[str | os.PathLike] = (), seed: int = 0, extra_config: dict | None = None):
        from accelerate import PartialState  # noqa: PLC0415

        self.state = PartialState()
        self.stage = stage
        self.args = args
        self.run_dir = Path(args.runs_dir) / args.run
        self.seed = seed
        self.parent = materialize_parent(parent, self.run_dir, is_main=self.state.is_main_process, seed=seed,
                                         dry_run=args.dry_run) if parent else None
        config = resolved_config(*configs, extra={"world_size": self.state.num_processes, **(extra_config or {})})
        self.key = checkpoint_key(config=config, parent=self.parent, inputs=[str(p) for p in inputs], seed=seed)
        if args.dry_run:
            self.ckpt = open_stage(self.run_dir, stage, self.key, is_main=False)
            return
        if self.state.is_main_process:
            self.ckpt = open_stage(self.run_dir, stage, self.key, is_main=True)
        self.state.wait_for_everyone()
        if not self.state.is_main_process:
            self.ckpt = open_stage(self.run_dir, stage, self.key, is_main=False)

    # -- decisions -------------------------------------------------------------------------

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

    def resume_checkpoint(self) -> str | None:
        return self.ckpt.last_trainer_checkpoint()

    def report_skip(self) -> None:
        if self.is_main:
            print(f"[{self.stage}] already complete: {self.ckpt.final_dir} (same parent, config and data); skipping")

    def plan(self, **details: Any) -> dict:
        """The dry-run plan: what would be read and written."""
        import torch  # noqa: PLC0415

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

    def print_plan(self, **details: Any) -> None:
        if self.is_main:
            print(json.dumps({"dry_run": True, **self.plan(**details)}, indent=2, default=str))

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

    def finalize(self, metrics: dict, **extra: Any) -> Path:
        """Write metrics and the manifest (last) and publish the version (main process only)."""
        self.state.wait_for_everyone()
        if self.is_main:
            final = self.ckpt.finalize(metrics=metrics, extra=extra or None)
            print(f"[{self.stage}] wrote {final}")
        self.state.wait_for_everyone()
        self.ckpt.status = "done"
        return self.ckpt.final_dir


def cli(main: Callable[[], Any], prog: str) -> None:
    """Run a stage's ``main`` as a command: a user error (bad recipe, bad data row, unusable parent)
    prints one clear line and exits 2 instead of a traceback."""
    from stages.common.checkpoint import CheckpointError  # noqa: PLC0415
    from stages.common.config import ConfigError  # noqa: PLC0415
    from stages.common.data import DataFormatError  # noqa: PLC0415

    try:
        main()
    except (ConfigError, DataFormatError, CheckpointError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)


__all__ = ["StageArguments", "StageContext", "StageCheckpoint", "cli", "setup_logging"]
