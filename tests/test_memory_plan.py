"""plan-memory (stages/common/memory.py): the model's size from its config, each term's response to the knob
that should move it, the largest micro-batch, the CLI, the reference recipes' stated output, and the
warning hook. The CPU check against measured peaks is in test_reference_shape.py."""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common import memory

REPO = Path(__file__).resolve().parents[1]
QWEN = "Qwen/Qwen2.5-Math-1.5B"
SHAPE = memory.ModelShape.from_config(memory.KNOWN_MODEL_CONFIGS[QWEN])


def _plan(stage="sft", budget=40 * memory.GiB, **setup):
    values = {"micro_batch": 4, "seq_len": 1024, "gradient_checkpointing": True, **setup}
    return memory.plan_memory(SHAPE, memory.TrainingSetup(stage=stage, **values), model=QWEN, budget=budget)


def test_parameter_count_matches_transformers():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = {k: v for k, v in memory.KNOWN_MODEL_CONFIGS[QWEN].items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**config))
    assert SHAPE.params == sum(p.numel() for p in model.parameters())
    linear = {name: 0 for name in memory.LINEAR_NAMES}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in linear:
            linear[name.split(".")[-1]] += module.weight.numel()
    assert sum(linear.values()) == SHAPE.layers * SHAPE.layer_linear_params


def test_each_knob_moves_its_term():
    full = _plan()
    assert full.components["weights"] == SHAPE.params * 2
    assert full.components["optimizer states"] == 2 * full.components["gradients"] == SHAPE.params * 4
    lora = _plan(use_peft=True, lora_r=64, lora_targets=memory.LINEAR_NAMES)
    assert lora.components["gradients"] < full.components["gradients"] / 5
    qlora = _plan(use_peft=True, load_in_4bit=True)
    assert qlora.components["weights"] < full.components["weights"] / 2
    no_gc = _plan(gradient_checkpointing=False)
    assert no_gc.components["activations"] > 10 * full.components["activations"]
    assert _plan(micro_batch=8).components["activations"] == pytest.approx(2 * full.components["activations"], rel=1e-6)
    grpo = _plan("grpo", frozen_copies=1)
    assert grpo.components["frozen copies"] == full.components["weights"]
    colocated = _plan("grpo", vllm_fraction=0.3)
    assert colocated.components["vLLM (colocated)"] == int(0.3 * 40 * memory.GiB)
    fp32 = _plan(weight_dtype="float32", autocast_bf16=True)
    assert fp32.components["weights"] == SHAPE.params * 4 and fp32.components["autocast weight cache"] > 0


def test_cpu_prefill_copies_the_frozen_lm_head_per_generated_sequence():
    """On CPU, LoRA's frozen 2-byte LM head is copied once per sequence in generation's prefill (measured: see
    memory._prefill_head_copy_bytes); counted as what it adds beyond the training step's peak."""
    name = "generation: LM head copies (CPU prefill)"
    rl = {"micro_batch": 4, "seq_len": 272, "generation_batch": 8, "use_peft": True, "budget": None}
    cpu = _plan("length_rl", device="cpu", **rl)
    copies = 8 * SHAPE.vocab * SHAPE.hidden * 2
    generation = 8 * 272 * SHAPE.layers * 2 * SHAPE.kv_width * 2 + 8 * SHAPE.vocab * 8 + copies  # KV cache, logits
    dynamic = ("activations", "LM head / loss", "generation (KV cache)", name)
    assert sum(cpu.components[k] for k in dynamic) == pytest.approx(generation, abs=16)  # generation is the peak
    assert name not in _plan("length_rl", device="cuda", **rl).components  # cuBLAS reads the expanded weight in place
    assert name not in _plan("length_rl", device="cpu", **{**rl, "use_peft": False}).components  # folds: grad head
    assert name not in _plan("length_rl", device="cpu", weight_dtype="float32", **rl).components  # fp32: no copy
    assert name not in _plan("sft", device="cpu", use_peft=True, budget=None).components  # no generation
    assert _plan("length_rl", device="cpu", load_in_4bit=True, **rl).components[name] > 0  # the head stays bf16


def test_largest_micro_batch_is_the_boundary():
    plan = _plan(gradient_checkpointing=False, budget=30 * memory.GiB)
    best = plan.largest_micro_batch
    assert best is not None and best >= 1
    fits = _plan(gradient_checkpointing=False, budget=30 * memory.GiB, micro_batch=best)
    over = _plan(gradient_checkpointing=False, budget=30 * memory.GiB, micro_batch=best + 1)
    assert fits.fits and not over.fits
    assert _plan(budget=2 * memory.GiB).largest_micro_batch is None  # not even the weights fit


def test_recipe_values_follow_base_overrides_and_trl_defaults(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model_name_or_path: Qwen/Qwen2.5-Math-1.5B\nper_device_train_batch_size: 4\n")
    child = tmp_path / "sft.yaml"
    child.write_text("base: base.yaml\nmax_length: 512\n")
    stage, values = memory.recipe_values(child, ["--per_device_train_batch_size", "2", "--use_peft", "true"])
    assert stage == "sft" and values["max_length"] == 512 and values["per_device_train_batch_size"] == 2
    assert values["use_peft"] is True and values["gradient_checkpointing"] is True  # SFTConfig's default


def test_stage_defaults_agree_with_the_stages():
    from stages.prm_lib.stage import PRMStageArguments
    from stages.rl_lib.stage import RLStageArguments

    for stage, cls in (("prm", PRMStageArguments), ("grpo", RLStageArguments), ("length_rl", RLStageArguments)):
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                    for f in dataclasses.fields(cls)}
        for key, value in memory.STAGE_DEFAULTS[stage].items():
            assert defaults[key] == value, (stage, key)


@pytest.mark.parametrize("text,expected", [("40GiB", 40 << 30), ("80 GB", 80 * 1024**3), ("512MiB", 512 << 20),
                                           ("1000", 1000)])
def test_parse_size(text, expected):
    assert memory.parse_size(text) == expected


def test_parse_size_rejects_garbage():
    with pytest.raises(memory.MemoryPlanError, match="not a memory size"):
        memory.parse_size("forty gigs")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.common", "plan-memory", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("stage", ["sft", "prm", "grpo", "length_rl"])
def test_reference_recipes_state_what_plan_memory_prints(stage, capsys):
    """Each reference recipe quotes plan-memory's verdict for one A100 40GB; the quote must stay true."""
    recipe = REPO / "recipes" / "qwen2.5-math-1.5b" / f"{stage}.yaml"
    code = memory.main(["--config", str(recipe), "--gpu-memory", "40GiB", "--model_config", QWEN])
    printed = capsys.readouterr().out
    assert code == 0, printed  # every reference recipe fits one A100 40GB
    total = re.search(r"total\s+([0-9.]+) GiB", printed).group(1)
    largest = re.search(r"largest micro-batch that fits: (\d+)", printed).group(1)
    stated = re.search(r"plan-memory .*40GiB.*: ([0-9.]+) GiB.*largest micro-batch (\d+)", recipe.read_text())
    assert stated, f"{recipe} does not quote plan-memory's output"
    assert (stated.group(1), stated.group(2)) == (total, largest), printed


def test_cli_names_the_knob_when_it_does_not_fit(tmp_path):
    recipe = REPO / "recipes" / "qwen2.5-math-1.5b" / "sft.yaml"
    out = _cli("--config", str(recipe), "--gpu-memory", "24GiB", "--model_config", QWEN, "--",
               "--activation_checkpointing", "false", "--per_device_train_batch_size", "32", "--max_length", "1024")
    assert out.returncode == 1
    assert "DOES NOT FIT" in out.stdout and "activation_checkpointing: true" in out.stdout
    assert "per_device_train_batch_size" in out.stdout


def test_cli_error_for_an_unreadable_model(tmp_path):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("model_name_or_path: some-org/unknown-model\n")
    out = _cli("--config", str(recipe))
    assert out.returncode == 2 and "--model_config" in out.stderr and "Traceback" not in out.stderr


def test_check_memory_plan_warns_before_loading(caplog, tmp_path):
    (tmp_path / "config.json").write_text(__import__("json").dumps(memory.KNOWN_MODEL_CONFIGS[QWEN]))
    values = {"per_device_train_batch_size": 16, "max_length": 2048, "gradient_checkpointing": False,
              "dtype": "bfloat16", "bf16": True}
    with caplog.at_level(logging.WARNING):
        plan = memory.check_memory_plan("sft", values, str(tmp_path), budget=40 * memory.GiB)
    assert plan is not None and plan.fits is False
    assert "activation_checkpointing: true" in caplog.text and "per_device_train_batch_size" in caplog.text
    caplog.clear()
    values.update(per_device_train_batch_size=1, gradient_checkpointing=True)
    with caplog.at_level(logging.WARNING):
        assert memory.check_memory_plan("sft", values, str(tmp_path), budget=40 * memory.GiB).fits
    assert not caplog.text
    # without a GPU and without a budget there is nothing to check against
    assert memory.check_memory_plan("sft", values, str(tmp_path)) is None or __import__("torch").cuda.is_available()


def test_hook_takes_a_stages_parsed_config(caplog):
    """What the harness passes: the stage's parsed dataclasses, flattened (memory.flat_values)."""
    from trl import ModelConfig, SFTConfig

    from stages.common.config import parse_config
    from stages.sft import SFTStageArguments

    recipe = REPO / "recipes" / "qwen2.5-math-1.5b" / "sft.yaml"
    parsed = parse_config((SFTStageArguments, SFTConfig, ModelConfig),
                          ["--config", str(recipe), "--bf16", "false", "--use_cpu", "true"])
    values = memory.flat_values(*parsed)
    assert values["per_device_train_batch_size"] == 8 and values["max_length"] == 4096
    with caplog.at_level(logging.WARNING):
        plan = memory.check_memory_plan("sft", values, QWEN, budget=8 * memory.GiB)
    assert plan.fits is False and plan.setup.micro_batch == 8 and plan.setup.gradient_checkpointing
    assert "use_peft: true" in caplog.text
