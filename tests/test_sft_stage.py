"""The SFT stage end to end on the tiny model: checkpoint contents, skip on rerun, dry run,
kill -9 and resume, and a 2-process `accelerate launch`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAST = ["--train_data", "arith:train:4000", "--max_train_samples", "256", "--per_device_train_batch_size", "16", "--logging_steps", "4",
        "--eval_data", "arith:test:24", "--eval_batch_size", "24", "--eval_max_new_tokens", "96", "--num_train_epochs", "1"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}


def _sft(runs, run, *extra, check=True):
    cmd = [sys.executable, "-m", "stages.sft", "--config", "recipes/tiny/sft.yaml", "--runs_dir", str(runs),
           "--run", run, *FAST, *extra]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, check=check, timeout=600)


def _versions(stage_dir: Path) -> list[str]:
    return sorted(p.name for p in stage_dir.iterdir() if p.name.startswith("v"))


@pytest.mark.slow
def test_sft_writes_checkpoint_then_skips(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dry = _sft(tmp_path, "r", "--dry_run", "true")
    plan = json.loads(dry.stdout[dry.stdout.index("{"):])
    assert plan["dry_run"] and plan["action"] == "build" and plan["train_rows"] == 256
    assert not (tmp_path / "r" / "sft").exists()  # a dry run writes no stage folder

    _sft(tmp_path, "r")
    v1 = tmp_path / "r" / "sft" / "v1"
    manifest = json.loads((v1 / "manifest.json").read_text())
    metrics = json.loads((v1 / "metrics.json").read_text())
    assert manifest["status"] == "complete" and manifest["parent"]["stage"] == "base"
    assert manifest["config"]["SFTStageArguments"]["max_train_samples"] == 256
    (evaluated,) = metrics["eval"].values()  # one eval set, reported on its own
    assert evaluated["n"] == 24 and 0.0 <= evaluated["pass@1"] <= 1.0 and "eval_before" not in metrics
    assert metrics["train"]["train_loss"] > 0
    details = [json.loads(line) for line in (v1 / "eval_details.jsonl").read_text().splitlines()]
    assert len(details) == 24 and {"completion", "correct", "executed_answer"} <= set(details[0])
    assert AutoModelForCausalLM.from_pretrained(v1).config.model_type == "qwen2"
    assert AutoTokenizer.from_pretrained(v1).chat_template
    assert not (v1 / "trainer").exists()  # intermediate trainer checkpoints are pruned

    again = _sft(tmp_path, "r")
    assert "already complete" in again.stdout
    assert _versions(tmp_path / "r" / "sft") == ["v1"]
    changed = _sft(tmp_path, "r", "--learning_rate", "5e-4")
    assert "wrote" in changed.stdout and _versions(tmp_path / "r" / "sft") == ["v1", "v2"]


@pytest.mark.slow
def test_sft_bad_data_is_an_error_before_anything_is_written(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "question": "q", "answer": "1", "completion": "c"}) + "\n")
    out = _sft(tmp_path, "r", "--train_data", str(bad), check=False)
    assert out.returncode != 0 and f"{bad}:1: field 'executed_answer' is missing" in out.stderr
    assert not (tmp_path / "r" / "sft").exists()


@pytest.mark.slow
def test_sft_kill_9_then_resume(tmp_path):
    cmd = [sys.executable, "-m", "stages.sft", "--config", "recipes/tiny/sft.yaml", "--runs_dir", str(tmp_path),
           "--run", "k", *FAST, "--max_train_samples", "640", "--save_steps", "5", "--save_total_limit", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    partial = tmp_path / "k" / "sft" / "v1.partial" / "trainer"
    deadline = time.time() + 300
    while time.time() < deadline:
        if any((c / "trainer_state.json").exists() for c in partial.glob("checkpoint-*")):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("no trainer checkpoint appeared")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stage_dir = tmp_path / "k" / "sft"
    assert _versions(stage_dir) == ["v1.partial"]  # nothing that looks complete
    assert not (stage_dir / "latest").exists()
    resumed = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert _versions(stage_dir) == ["v1"]
    log = json.loads((stage_dir / "v1" / "log_history.json").read_text())
    assert log[-1]["step"] == 40  # 640 rows / batch 16: the resumed run finished the same schedule


@pytest.mark.slow
def test_sft_accelerate_two_processes(tmp_path):
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", "accelerate_configs/cpu.yaml",
           "--num_processes", "2", "-m", "stages.sft", "--config", "recipes/tiny/sft.yaml",
           "--runs_dir", str(tmp_path), "--run", "ddp", *FAST, "--max_train_samples", "128"]
    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    v1 = tmp_path / "ddp" / "sft" / "v1"
    manifest = json.loads((v1 / "manifest.json").read_text())
    assert manifest["config"]["world_size"] == 2
    metrics = json.loads((v1 / "metrics.json").read_text())
    (evaluated,) = metrics["eval"].values()
    assert evaluated["n"] == 24  # both ranks generated a shard; all problems gathered once
    # 128 rows, batch 16 per process, 2 processes: 4 optimizer steps
    assert json.loads((v1 / "log_history.json").read_text())[-1]["step"] == 4
