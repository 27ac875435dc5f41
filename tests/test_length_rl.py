"""grpo then length_rl end to end on the tiny model (a couple of GRPO steps each): the versioned
checkpoint, every reward term and the step-time split in the log, the zero-spread warning count,
the before/after pass@1, skip on rerun, and length_rl starting from the latest policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# 2 prompts x 4 generations, 12 new tokens: a few seconds a step on an idle core
FAST = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--num_generations", "4",
        "--max_completion_length", "12", "--logging_steps", "1", "--save_steps", "1", "--max_train_samples", "64",
        "--eval_data", "arith:test:6", "--eval_max_new_tokens", "12", "--eval_batch_size", "6"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}


def _stage(stage: str, runs: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", f"stages.{stage}", "--config", f"recipes/tiny/{stage}.yaml", "--runs_dir", str(runs),
           "--run", "r", *FAST, *extra]
    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_grpo_then_length_rl(tmp_path):
    # the untrained tiny model as the policy: no group has any correctness spread, which must warn
    _stage("grpo", tmp_path, "--model_name_or_path", "tiny")
    v1 = tmp_path / "r" / "grpo" / "v1"
    manifest = json.loads((v1 / "manifest.json").read_text())
    metrics = json.loads((v1 / "metrics.json").read_text())
    assert manifest["status"] == "complete" and manifest["parent"]["stage"] == "base"
    assert (v1 / "config.json").exists() and (v1 / "tokenizer_config.json").exists()
    assert metrics["rewards"] == ["pot_correctness", "pot_format", "brevity"]  # no @prm yet: bonus left out
    (source,) = metrics["eval"]  # per eval set: before, after and the change
    assert metrics["eval_before"][source]["n"] == 6 and metrics["eval"][source]["n"] == 6
    assert "pass@1" in metrics["eval_delta"][source]
    split = metrics["step_time_split"]
    assert split["generation_s"] > 0 and split["optimisation_s"] > 0 and split["rewards_s"] >= 0
    assert split["generation_s"] + split["rewards_s"] + split["optimisation_s"] == pytest.approx(split["step_s"])
    assert metrics["zero_spread"]["mean_share"] == 1.0 and metrics["zero_spread"]["warnings"] == 2
    history = json.loads((v1 / "log_history.json").read_text())
    logged = set().union(*map(set, history))
    for name in metrics["rewards"]:
        assert f"rewards/{name}/mean" in logged and f"groups/zero_spread/{name}" in logged
    assert {"frac_reward_zero_std", "time/generation_s", "time/rewards_s", "time/optimisation_s"} <= logged

    again = _stage("grpo", tmp_path, "--model_name_or_path", "tiny")
    assert "already complete" in again.stdout

    # length_rl's recipe starts from @latest_policy: the grpo checkpoint just written
    _stage("length_rl", tmp_path, "--eval_before", "false")
    lr = tmp_path / "r" / "length_rl" / "v1"
    manifest = json.loads((lr / "manifest.json").read_text())
    metrics = json.loads((lr / "metrics.json").read_text())
    assert manifest["parent"]["stage"] == "grpo"
    assert "eval_before" not in metrics and [m["n"] for m in metrics["eval"].values()] == [6]
    history = json.loads((lr / "log_history.json").read_text())
    logged = set().union(*map(set, history))
    assert {"rewards/kimi_length/mean", "rewards/dapo_overlong/mean", "brevity/coef"} <= logged
    coefs = [h["brevity/coef"] for h in history if "brevity/coef" in h]
    assert coefs[0] < coefs[-1]  # the brevity coefficient ramps up over training
