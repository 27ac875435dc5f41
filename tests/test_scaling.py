"""Scaling out: the accelerate configs parse and validate with accelerate's own classes; DDP and FSDP2 over 2
CPU processes (gloo) train the sft stage on the tiny model with the loss curve of a 1-process run over the
same global batch; GPU-only features on a CPU machine are one-line errors naming the key; the GPU check's
CPU smoke mode runs every part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "accelerate_configs").glob("*.yaml"))
# 64 rows, a global batch of 16 (16 x 1 process, 8 x 2 processes): 4 optimizer steps, fp32, no evaluation.
SFT = ["--config", "recipes/tiny/sft.yaml", "--train_data", "arith:train:4000", "--max_train_samples", "64",
       "--num_train_epochs", "1", "--logging_steps", "1", "--eval_data", "none", "--save_strategy", "no",
       "--warmup_steps", "0"]
# fp32 on CPU: the 2-process runs differ from the 1-process run only in reduction order and padding width
LOSS_RTOL = 1e-3


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_validates(path):
    """Every config loads as accelerate's ClusterConfig, and its DeepSpeed / FSDP section builds accelerate's
    plugin (which validates the fields and, for DeepSpeed, writes the JSON config DeepSpeed receives)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

    config = load_config_from_file(str(path))
    assert config.num_processes >= 1 and config.compute_environment.value == "LOCAL_MACHINE"
    if config.distributed_type == DistributedType.DEEPSPEED:
        ds = dict(config.deepspeed_config)
        ds.pop("deepspeed_multinode_launcher")
        plugin = DeepSpeedPlugin(**ds)
        zero = plugin.deepspeed_config["zero_optimization"]
        assert zero["stage"] == ds["zero_stage"] in (2, 3)
        assert zero["offload_optimizer"]["device"] == ds["offload_optimizer_device"]
        if ds["zero_stage"] == 3:
            assert zero["offload_param"]["device"] == ds["offload_param_device"]
            assert zero["stage3_gather_16bit_weights_on_model_save"]  # full weights in the checkpoint
        assert config.mixed_precision in ("bf16", "no")
    elif config.distributed_type == DistributedType.FSDP:
        # the YAML keys as accelerate launch hands them to the plugin (FSDP_* environment variables)
        renamed = {"fsdp_version": "fsdp_version", "fsdp_offload_params": "cpu_offload"}
        fsdp = {renamed.get(k, k.removeprefix("fsdp_")): v for k, v in config.fsdp_config.items()}
        plugin = FullyShardedDataParallelPlugin(**fsdp)
        assert plugin.fsdp_version == 2 and plugin.auto_wrap_policy is not None
    if config.use_cpu:
        assert config.mixed_precision == "no"  # the CPU configs train in fp32 (recipes set bf16: false)


def test_offload_variants_differ_only_in_offload():
    from accelerate.commands.config.config_args import load_config_from_file

    for stage in ("zero2", "zero3"):
        plain = load_config_from_file(str(REPO / "accelerate_configs" / f"{stage}.yaml")).to_dict()
        offload = load_config_from_file(str(REPO / "accelerate_configs" / f"{stage}_offload.yaml")).to_dict()
        diff = {k for k in plain["deepspeed_config"] if plain["deepspeed_config"][k] != offload["deepspeed_config"][k]}
        assert diff == ({"offload_optimizer_device"} if stage == "zero2" else
                        {"offload_optimizer_device", "offload_param_device"})
        assert offload["deepspeed_config"]["offload_optimizer_device"] == "cpu"


def _losses(runs: Path, run: str) -> list[float]:
    history = json.loads((runs / run / "sft" / "latest" / "log_history.json").read_text())
    return [h["loss"] for h in history if "loss" in h]


def _sft(runs: Path, run: str, launcher: list[str], *extra: str) -> subprocess.CompletedProcess:
    cmd = [*launcher, "-m", "stages.sft", *SFT, "--runs_dir", str(runs), "--run", run, *extra]
    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.mark.slow
def test_ddp_and_fsdp2_match_one_process(tmp_path):
    """ddp.yaml (with the recipe's use_cpu) and fsdp2_cpu.yaml (fsdp2.yaml's sharding on gloo; accelerate 1.15
    needs tests/fsdp_cpu_launch.py to turn FSDP on for CPU processes) over 2 processes of 8 rows reproduce the
    losses of 1 process of 16 rows, and save whole weights equal to it."""
    from safetensors.torch import load_file

    accelerate = str(Path(sys.executable).parent / "accelerate")
    _sft(tmp_path, "one", [sys.executable], "--per_device_train_batch_size", "16")
    one = _losses(tmp_path, "one")
    assert len(one) == 4 and one[-1] < one[0]
    weights = load_file(tmp_path / "one" / "sft" / "latest" / "model.safetensors")
    for config, run, script in (("ddp.yaml", "ddp", []), ("fsdp2_cpu.yaml", "fsdp2", ["tests/fsdp_cpu_launch.py"])):
        launcher = [accelerate, "launch", "--config_file", f"accelerate_configs/{config}", "--num_processes", "2",
                    "--mixed_precision", "no", *script]
        out = _sft(tmp_path, run, launcher, "--per_device_train_batch_size", "8", "--eval_data", "arith:test:6",
                   "--eval_batch_size", "4", "--eval_max_new_tokens", "8")
        assert ("fully_shard applied" in out.stderr) == (run == "fsdp2")
        latest = tmp_path / run / "sft" / "latest"
        assert json.loads((latest / "manifest.json").read_text())["config"]["world_size"] == 2
        assert _losses(tmp_path, run) == pytest.approx(one, rel=LOSS_RTOL), run
        saved = load_file(latest / "model.safetensors")  # gathered from the shards under FSDP2
        assert saved.keys() == weights.keys()
        assert max(float((saved[k] - weights[k]).abs().max()) for k in weights) < 1e-4, run
        assert json.loads((latest / "metrics.json").read_text())["eval"]["n"] == 6  # generation across 2 ranks


def test_fsdp2_cpu_config_shards_like_the_gpu_config():
    import yaml

    gpu = yaml.safe_load((REPO / "accelerate_configs" / "fsdp2.yaml").read_text())
    cpu = yaml.safe_load((REPO / "accelerate_configs" / "fsdp2_cpu.yaml").read_text())
    assert cpu["fsdp_config"] == gpu["fsdp_config"] and cpu["distributed_type"] == gpu["distributed_type"]
    assert cpu["use_cpu"] and not gpu.get("use_cpu")


@pytest.mark.parametrize("key,value", [("attn_implementation", "flash_attention_2"), ("load_in_4bit", True)])
def test_gpu_features_on_cpu_are_errors_naming_the_key(key, value):
    from trl import ModelConfig

    from stages.common.config import ConfigError
    from stages.common.modeling import check_device_support

    args = ModelConfig(model_name_or_path="tiny", **{key: value})
    with pytest.raises(ConfigError, match=key):
        check_device_support(args, cuda=False)
    check_device_support(ModelConfig(model_name_or_path="tiny", attn_implementation="sdpa"), cuda=False)


def test_deepspeed_on_cpu_is_an_error_naming_the_key(monkeypatch):
    from types import SimpleNamespace

    from stages.common.config import ConfigError
    from stages.common.modeling import check_device_support

    with pytest.raises(ConfigError, match="deepspeed"):
        check_device_support(None, SimpleNamespace(deepspeed="ds_config.json"), cuda=False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DEEPSPEED"):
        check_device_support(None, None, cuda=False)


@pytest.mark.slow
def test_stage_with_flash_attention_on_cpu_exits_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "stages.sft", *SFT, "--runs_dir", str(tmp_path), "--run", "fa",
                          "--attn_implementation", "flash_attention_2"], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "attn_implementation: flash_attention_2" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_gpu_check_cpu_smoke(tmp_path):
    """bench/gpu_check.py --cpu-smoke runs every part of the GPU check at toy size and writes its table."""
    out_json = tmp_path / "gpu_check.json"
    out = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu-smoke", "--out", str(out_json)], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out_json.read_text())
    assert summary["errors"] == {}
    assert summary["bare_loop"]["tokens_per_s"] > 0 and summary["sft_stage"]["ratio_to_bare"] > 0
    assert summary["grpo"]["split"]["generation_s"] > 0 and summary["grpo"]["rollout_tokens_per_s"] > 0
    assert summary["prm_scoring"]["solutions_per_s"] > 0
    assert {m["stage"] for m in summary["memory"]} >= {"sft", "grpo", "prm"}
    assert "sft stage / bare loop" in out.stdout  # the summary table
