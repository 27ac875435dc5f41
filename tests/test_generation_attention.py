"""The attention kernel by phase: a model that trains with eager attention generates with SDPA
(faster without a backward pass) and is back on eager afterwards, also after an error; other
kernels are left alone; the switch does not change what the model computes."""

from __future__ import annotations

import pytest
import torch
from trl import GRPOTrainer

from stages.common import generation
from stages.common.generation import generate, generation_attention
from stages.common.tiny import build_model, build_tokenizer
from stages.rl_lib.trainer import TimedGRPOTrainer

TEXTS = ["x = 1\nprint(x)", "Tia has 3 apples. How many?", "```python\ny = 2 * 3\nprint(y)\n```"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TEXTS * 20, vocab_size=300)


def _model(tokenizer, attn: str):
    model = build_model(tokenizer, hidden_size=32, num_layers=1, heads=4, kv_heads=2, intermediate=64)
    model.set_attn_implementation(attn)
    return model.eval()


def test_an_eager_model_generates_with_sdpa_and_trains_with_eager_again(tokenizer):
    model = _model(tokenizer, "eager")
    with generation_attention(model) as kernel:
        assert kernel == "sdpa"
        assert model.config._attn_implementation == "sdpa"
    assert model.config._attn_implementation == "eager"
    with pytest.raises(RuntimeError, match="boom"), generation_attention(model):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "eager"


def test_other_kernels_and_non_transformers_models_are_left_alone(tokenizer):
    model = _model(tokenizer, "sdpa")
    with generation_attention(model) as kernel:
        assert kernel == "sdpa" and model.config._attn_implementation == "sdpa"
    with generation_attention(torch.nn.Linear(2, 2)) as kernel:
        assert kernel is None


def test_the_switch_reaches_the_model_under_peft_and_ddp_style_wrappers(tokenizer):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(_model(tokenizer, "eager"), LoraConfig(r=2, target_modules=["q_proj"]))
    wrapper = torch.nn.Module()
    wrapper.module = peft_model  # what DistributedDataParallel exposes
    base = peft_model.get_base_model()
    for outer in (peft_model, wrapper):
        with generation_attention(outer):
            assert base.config._attn_implementation == "sdpa"
        assert base.config._attn_implementation == "eager"


def test_the_model_computes_the_same_logits_under_either_kernel(tokenizer):
    model = _model(tokenizer, "eager")
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        eager = model(**enc).logits
        with generation_attention(model):
            sdpa = model(**enc).logits
    mask = enc["attention_mask"].bool()
    assert torch.allclose(eager[mask], sdpa[mask], atol=1e-5)


def test_generate_runs_model_generate_under_sdpa(tokenizer, monkeypatch):
    model = _model(tokenizer, "eager")
    seen = []
    original = model.generate

    def recording_generate(*args, **kwargs):
        seen.append(model.config._attn_implementation)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    out = generate(model, tokenizer, TEXTS, max_new_tokens=4, batch_size=2, distributed=False)
    assert len(out) == len(TEXTS) and seen == ["sdpa", "sdpa"]
    assert model.config._attn_implementation == "eager"
    monkeypatch.setattr(generation, "GENERATION_ATTENTION", {})  # the switch off: eager throughout
    seen.clear()
    assert generate(model, tokenizer, TEXTS, max_new_tokens=4, batch_size=2, distributed=False) == out
    assert seen == ["eager", "eager"]


def test_grpo_generates_under_sdpa_and_optimises_under_eager(tokenizer, monkeypatch):
    model = _model(tokenizer, "eager")
    seen = []

    def fake_generate(self, prompts):
        seen.append(self.model.config._attn_implementation)
        return prompts

    monkeypatch.setattr(GRPOTrainer, "_generate", fake_generate)
    trainer = object.__new__(TimedGRPOTrainer)  # only what _generate touches
    trainer.model, trainer._pending = model, {"generation_s": 0.0}
    assert trainer._generate(["p"]) == ["p"]
    assert seen == ["sdpa"] and model.config._attn_implementation == "eager"
    assert trainer._pending["generation_s"] > 0
