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
    from stages.prm_lib.stage import PRMStageArguments
    from stages.rl_lib.stage import RLStageArguments
    from stages.sft import SFTStageArguments
    from stages.synth_lib.synthesize import SynthArguments

    return {"synth": (SynthArguments,), "sft": (SFTStageArguments, SFTConfig, ModelConfig),
            "prm": (PRMStageArguments, TrainingArguments, ModelConfig),
            "grpo": (RLStageArguments, GRPOConfig, ModelConfig),
            "length_rl": (RLStageArguments, GRPOConfig, ModelConfig), "eval": (EvalArguments,),
            "dpo": (DPOStageArguments, DPOConfig, ModelConfig)}[stage]


def _parse(path: Path):
    from stages.common.config import parse_config

    extra = ["--bf16", "false"] if path.stem not in ("synth", "eval") else []
    if path.stem in ("sft", "prm", "grpo", "length_rl", "dpo"):
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
    for stage in ("sft", "grpo", "dpo", "length_rl"):
        args = _parse(Path("recipes/tiny") / f"{stage}.yaml")[0]
        assert args.eval_data == [usual, hard], stage
    (evaluation,) = _parse(Path("recipes/tiny/eval.yaml"))
    assert evaluation.eval_sets[:2] == [usual, hard]
    for stage in ("grpo", "length_rl"):
        args = _parse(Path("recipes/tiny") / f"{stage}.yaml")[0]
        levels = {row["level"] for src in args.train_data for row in load_problems(src)[:8]}
        assert levels == {1, 2, 3, 4}, (stage, levels)  # hard problems mixed with usual ones
