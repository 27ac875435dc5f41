"""Every shipped recipe parses with its stage's dataclasses (base: chains included), and the
tiny-verbose variant differs from tiny only where it says."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.relative_to(REPO) for p in (REPO / "recipes").glob("*/*.yaml"))


def _types(stage: str):
    from transformers import TrainingArguments
    from trl import GRPOConfig, ModelConfig, SFTConfig

    from eval.gsm8k import EvalArguments
    from stages.prm_lib.stage import PRMStageArguments
    from stages.revise_lib.stage import ReviseArguments
    from stages.rl_lib.stage import RLStageArguments
    from stages.sft import SFTStageArguments
    from stages.synth_lib.synthesize import SynthArguments

    return {"synth": (SynthArguments,), "sft": (SFTStageArguments, SFTConfig, ModelConfig),
            "prm": (PRMStageArguments, TrainingArguments, ModelConfig),
            "grpo": (RLStageArguments, GRPOConfig, ModelConfig),
            "length_rl": (RLStageArguments, GRPOConfig, ModelConfig), "eval": (EvalArguments,),
            "revise": (ReviseArguments, SFTConfig, ModelConfig)}[stage]


def _parse(path: Path):
    from stages.common.config import parse_config

    extra = ["--bf16", "false"] if path.stem not in ("synth", "eval") else []
    if path.stem in ("sft", "prm", "grpo", "length_rl", "revise"):
        extra += ["--use_cpu", "true"]
    return parse_config(_types(path.stem), ["--config", str(REPO / path), *extra])


@pytest.mark.parametrize("recipe", RECIPES, ids=str)
def test_recipe_parses(recipe):
    assert _parse(recipe)


def test_tiny_verbose_overrides_only_what_it_names():
    import dataclasses

    for stage in ("synth", "sft", "prm", "grpo", "length_rl", "eval"):
        base = _parse(Path("recipes/tiny") / f"{stage}.yaml")
        variant = _parse(Path("recipes/tiny-verbose") / f"{stage}.yaml")
        diff = {f.name for b, v in zip(base, variant, strict=True) for f in dataclasses.fields(b)
                if getattr(b, f.name) != getattr(v, f.name)}
        assert diff == {"synth": {"verbose_fraction"}, "sft": {"seed"}}.get(stage, set()), (stage, diff)
