"""Every training and scoring stage runs 2 optimizer steps from its reference recipe
(recipes/qwen2.5-math-1.5b/) on a model of Qwen2.5-Math-1.5B's shape (2 layers, random weights, the
151,936-token vocabulary, Qwen2.5-Math's chat template), with overrides for size only: bf16 where the
CPU has it, gradient checkpointing, LoRA (the PRMs and length_rl), full fine-tuning with a reference
model (grpo). Each run's measured training peak must be within 25% of plan-memory's estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reference_shape import assert_peak_within_plan, assert_trained, run_reference_stage

from stages.common.arith import generate_problems

LENGTHS = ["--per_device_train_batch_size", "2", "--max_length", "128"]
EVAL = ["--eval_data", "gsm8k:test:2", "--eval_batch_size", "2", "--eval_max_new_tokens", "8"]
# GRPO: one prompt x 4 generations per step, 16 new tokens, GSM8K problems; transformers generation
# (vLLM is not installed here). Random weights never write a correct program, so the PRM bonus scores
# every completion (only_correct: false) to exercise the scorer on this shape.
RL = ["--train_data", "gsm8k:train:8", "--per_device_train_batch_size", "4", "--max_completion_length", "16",
      "--use_vllm", "false", *EVAL]


def _stepwise_file(folder: Path, n: int = 8) -> Path:
    rows = []
    for i, p in enumerate(generate_problems(n, split="train", seed=3)):
        steps = p["program"].splitlines()
        k = 1 + i % (len(steps) - 1)
        rows.append({"prompt": p["question"], "completions": steps, "labels": [True] * k + [False] * (len(steps) - k)})
    path = folder / "steps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prm(kind: str, model: Path, tmp_path: Path):
    data = _stepwise_file(tmp_path)
    # MC labels need a policy that writes programs; random weights do not, so the labels are imported.
    return run_reference_stage("prm", model, tmp_path, "--label_source", "import", "--import_files", str(data),
                               "--bon_problems", "none", "--eval_fraction", "0.25", "--activation_checkpointing", "true",
                               "--prm_type", kind, *LENGTHS)


@pytest.fixture(scope="module")
def shape_prm(qwen_shape_model, tmp_path_factory):
    """The token-classification PRM of the reference recipe (LoRA) on the reference shape; grpo's PRM bonus."""
    return _prm("token_classification", qwen_shape_model, tmp_path_factory.mktemp("shape-prm"))


@pytest.mark.slow
def test_sft_reference_recipe_on_the_reference_shape(qwen_shape_model, tmp_path):
    run = run_reference_stage("sft", qwen_shape_model, tmp_path, "--train_data", "arith:train:8",
                              "--max_train_samples", "4", *LENGTHS, *EVAL)
    losses = assert_trained(run)
    assert losses[0] > 10  # random weights over 151,936 tokens: about ln(151936) = 11.9
    config = json.loads((run.checkpoint / "config.json").read_text())
    assert config["vocab_size"] == 151936 and config["hidden_size"] == 1536 and config["dtype"] == "bfloat16"
    assert run.metrics["eval"]["n"] == 2
    assert_peak_within_plan(run)


@pytest.mark.slow
def test_prm_token_classification_on_the_reference_shape(shape_prm):
    assert_trained(shape_prm)
    assert json.loads((shape_prm.checkpoint / "prm_config.json").read_text())["prm_type"] == "token_classification"
    assert "steps" in shape_prm.metrics["eval"]
    assert_peak_within_plan(shape_prm)


@pytest.mark.slow
def test_prm_implicit_on_the_reference_shape(qwen_shape_model, tmp_path):
    run = _prm("implicit", qwen_shape_model, tmp_path)
    assert_trained(run)
    assert (run.checkpoint / "reference" / "config.json").is_file()
    assert_peak_within_plan(run)


@pytest.mark.slow
def test_grpo_on_the_reference_shape(qwen_shape_model, shape_prm, tmp_path):
    options = {"brevity": {"coef": 0.0002}, "prm_bonus": {"aggregation": "min", "only_correct": False}}
    run = run_reference_stage("grpo", qwen_shape_model, tmp_path, *RL, "--prm_checkpoint", str(shape_prm.checkpoint),
                              "--reward_options", json.dumps(options))
    assert_trained(run)
    assert run.metrics["rewards"] == ["pot_correctness", "pot_format", "brevity", "prm_bonus"]
    split = run.metrics["step_time_split"]
    assert split["generation_s"] > 0 and split["rewards_s"] > 0
    assert_peak_within_plan(run)


@pytest.mark.slow
def test_length_rl_with_lora_on_the_reference_shape(qwen_shape_model, tmp_path):
    run = run_reference_stage("length_rl", qwen_shape_model, tmp_path, *RL, "--use_peft", "true", "--lora_r", "8")
    assert_trained(run)
    assert (run.checkpoint / "adapter_config.json").is_file()  # LoRA: the policy is saved as an adapter
    assert_peak_within_plan(run)
