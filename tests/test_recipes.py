"""Every shipped recipe parses with its stage's dataclasses (base: chains included), and the tiny
recipe holds a teacher style mix and names both eval splits."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.relative_to(REPO) for p in (REPO / "recipes").glob("*/*.yaml"))


def _types(stage: str):
    from transformers import TrainingArguments
    from trl import DPOConfig, GRPOConfig, ModelConfig, SFTConfig

    from eval.gsm8k import EvalArguments
    from stages.dpo_lib.stage import DPOStageArguments
    from stages.evolve_lib.stage import EvolveArguments
    from stages.prm_lib.stage import PRMStageArguments
    from stages.revise_lib.stage import ReviseArguments
    from stages.rl_lib.stage import RLStageArguments
    from stages.sft import SFTStageArguments
    from stages.synth_lib.synthesize import SynthArguments

    return {"synth": (SynthArguments,), "sft": (SFTStageArguments, SFTConfig, ModelConfig),
            "prm": (PRMStageArguments, TrainingArguments, ModelConfig),
            "grpo": (RLStageArguments, GRPOConfig, ModelConfig),
            "length_rl": (RLStageArguments, GRPOConfig, ModelConfig), "eval": (EvalArguments,),
            "evolve": (EvolveArguments, SFTConfig, ModelConfig),
            "revise": (ReviseArguments, SFTConfig, ModelConfig),
            "dpo": (DPOStageArguments, DPOConfig, ModelConfig)}[stage]


def _parse(path: Path):
    from stages.common.config import parse_config

    extra = ["--bf16", "false"] if path.stem not in ("synth", "eval") else []
    if path.stem in ("sft", "prm", "grpo", "length_rl", "evolve", "revise", "dpo"):
        extra += ["--use_cpu", "true"]
    return parse_config(_types(path.stem), ["--config", str(REPO / path), *extra])


@pytest.mark.parametrize("recipe", RECIPES, ids=str)
def test_recipe_parses(recipe):
    assert _parse(recipe)


def test_tiny_recipe_has_a_teacher_style_mix_and_evaluates_the_usual_and_the_hard_split():
    from stages.common.data import load_problems
    from stages.common.pot_style import parse_style_mix, style_features

    (synth,) = _parse(Path("recipes/tiny/synth.yaml"))
    mix = parse_style_mix(synth.style_mix)
    verbose = sum(share for style, share in mix if {"comments", "prints", "answer_var"} & set(style_features(style)))
    assert 0.5 < verbose < 1.0  # most programs carry something to strip, some are already concise
    hard_in_sft = [src for src in synth.problems if "levels=4" in src]
    assert hard_in_sft and all(src.startswith("arith:train:") for src in synth.problems)
    usual, hard = "arith:test:500", "arith:test:300:0:levels=4"
    for stage in ("sft", "grpo", "evolve", "revise", "dpo", "length_rl"):
        args = _parse(Path("recipes/tiny") / f"{stage}.yaml")[0]
        assert args.eval_data == [usual, hard], stage
    (evaluation,) = _parse(Path("recipes/tiny/eval.yaml"))
    assert evaluation.eval_sets[:2] == [usual, hard]
    for stage in ("grpo", "length_rl"):
        args = _parse(Path("recipes/tiny") / f"{stage}.yaml")[0]
        levels = {row["level"] for src in args.train_data for row in load_problems(src)[:8]}
        assert levels == {1, 2, 3, 4}, (stage, levels)  # hard problems mixed with usual ones


def test_reference_recipe_follows_the_seed_where_it_is_explicit():
    sft_args, sft, sft_model = _parse(Path("recipes/qwen2.5-math-1.5b/sft.yaml"))
    assert (sft.learning_rate, sft.max_length, sft.activation_checkpointing) == (2e-5, 4096, True)
    for stage in ("sft", "prm", "grpo", "length_rl"):
        assert _parse(Path("recipes/qwen2.5-math-1.5b") / f"{stage}.yaml")[2].attn_implementation == "auto"
    grpo_args, grpo, _ = _parse(Path("recipes/qwen2.5-math-1.5b/grpo.yaml"))
    assert (grpo.learning_rate, grpo.beta, grpo.num_generations) == (1e-6, 0.02, 4)
    assert grpo_args.reward_options["brevity"]["coef"] == 0.0002
    prm_args, _, _ = _parse(Path("recipes/qwen2.5-math-1.5b/prm.yaml"))
    assert prm_args.reweight == "none"  # GSM8K alone is one domain (the recipe says why)
    text = (REPO / "recipes/qwen2.5-math-1.5b/grpo.yaml").read_text()
    for departure in ("stage order", "reward weights", "loss_type dapo", "scale_rewards"):
        assert departure in text  # each departure from the seed says why


def test_attn_implementation_auto_picks_flash_attention_only_where_it_runs(caplog):
    import logging

    import torch

    from stages.common import modeling

    with caplog.at_level(logging.INFO, logger="stages.common.modeling"):
        choice = modeling.auto_attention(torch.bfloat16)
    expected = "flash_attention_2" if (torch.cuda.is_available() and modeling.importlib.util.find_spec("flash_attn")) \
        else "sdpa"
    assert choice == expected and f"attn_implementation auto -> {expected}" in caplog.text
    assert modeling.auto_attention(torch.float32) == "sdpa"  # FlashAttention-2 needs half precision
    from trl import ModelConfig

    kwargs = modeling.model_kwargs(ModelConfig(model_name_or_path="x", attn_implementation="auto", dtype="float32"))
    assert kwargs["attn_implementation"] == "sdpa"
