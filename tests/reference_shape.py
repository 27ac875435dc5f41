"""Running a stage from its reference recipe (recipes/qwen2.5-math-1.5b/) on the Qwen2.5-Math-1.5B-shaped
test model (``qwen_shape_model`` in conftest.py), with overrides for size only.

A new stage's test is one short function::

    @pytest.mark.slow
    def test_dpo_on_the_reference_shape(qwen_shape_model, tmp_path):
        run = run_reference_stage("dpo", qwen_shape_model, tmp_path, "--train_data", ...)
        assert_trained(run, steps=2)

Every run: 2 optimizer steps, one micro-batch of 2-4 rows, short sequences, bf16 where the CPU has it
(``--bf16 true`` over ``dtype: bfloat16`` weights, as the recipe says; else fp32, with a warning),
``--use_cpu true`` and ``--report_to none`` (no GPU, no tensorboard here). Each run goes through the
stage's command line (``python -m stages.<stage>``) under the memory probe (bench/memory_probe.py), which
also records the stage's measured peak memory next to the plan-memory estimate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "qwen2.5-math-1.5b"

# The sizes every reference-shape run shares; a stage adds its own data and length overrides.
SIZE = ["--max_steps", "2", "--gradient_accumulation_steps", "1", "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "true", "--dataloader_num_workers", "0"]


def cpu_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 / AMX)."""
    import torch  # deferred: heavy

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision_overrides() -> list[str]:
    if cpu_bf16():
        return ["--bf16", "true", "--dtype", "bfloat16"]
    warnings.warn("this CPU has no native bf16: the reference-shape runs train in fp32", stacklevel=2)
    return ["--bf16", "false", "--dtype", "float32"]


@dataclass
class StageRun:
    stage: str
    checkpoint: Path
    metrics: dict
    log_history: list[dict]
    probe: dict
    wall_s: float
    stderr: str


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO)}


def run_reference_stage(stage: str, model: Path, tmp_path: Path, *overrides: str, recipe: str | None = None,
                        run: str = "shape") -> StageRun:
    """Run ``python -m stages.<stage> --config recipes/qwen2.5-math-1.5b/<stage>.yaml`` on ``model``
    with :data:`SIZE`, the precision overrides and ``overrides``; returns its checkpoint and outputs."""
    recipe_path = RECIPES / f"{recipe or stage}.yaml"
    runs = tmp_path / "runs"
    probe_out = tmp_path / f"probe-{stage}.json"
    cmd = [sys.executable, str(REPO / "bench" / "memory_probe.py"), "--out", str(probe_out), "--",
           "-m", f"stages.{stage}", "--config", str(recipe_path), "--model_name_or_path", str(model),
           "--runs_dir", str(runs), "--run", run, *SIZE, *precision_overrides(), *overrides]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    assert out.returncode == 0, f"{stage} failed ({out.returncode}):\n{out.stderr[-4000:]}"
    checkpoint = (runs / run / stage / "latest").resolve()
    return StageRun(stage, checkpoint, json.loads((checkpoint / "metrics.json").read_text()),
                    json.loads((checkpoint / "log_history.json").read_text()), json.loads(probe_out.read_text()),
                    wall, out.stderr)


def assert_trained(run: StageRun, steps: int = 2) -> list[float]:
    """The run made ``steps`` optimizer steps with a finite loss each, and wrote a complete checkpoint;
    returns the per-step losses."""
    import math

    losses = [h["loss"] for h in run.log_history if "loss" in h]
    assert [h["step"] for h in run.log_history if "loss" in h] == list(range(1, steps + 1)), run.log_history
    assert all(math.isfinite(x) for x in losses), losses
    manifest = json.loads((run.checkpoint / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["stage"] == run.stage
    return losses


def assert_peak_within_plan(run: StageRun, tolerance: float = 0.25) -> None:
    """The stage's measured training peak is within ``tolerance`` of plan-memory's estimate."""
    probe = run.probe
    assert probe["train_peak_bytes"] > 0 and probe["plan_bytes"] > 0, probe
    ratio = probe["train_peak_bytes"] / probe["plan_bytes"]
    assert abs(ratio - 1) <= tolerance, (f"{run.stage}: measured {probe['train_peak_bytes'] / 2**30:.2f} GiB, plan "
                                         f"{probe['plan_bytes'] / 2**30:.2f} GiB (ratio {ratio:.2f})", probe)
