"""Sampling in ``stages.common.generation.generate``: the inverse-CDF draw (CDFSampling) follows the
softmax of the warped logits, keeps to top-p's nucleus and never draws a token without mass; each
prompt's key/value cache is computed once for all its samples without changing a sample; batches
follow the expected completion lengths when given."""

from __future__ import annotations

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from stages.common import generation
from stages.common.generation import CDFSampling, cdf_sampler, generate
from stages.common.tiny import build_model, build_tokenizer

TEXTS = ["x = 1\nprint(x)", "Tia has 3 apples. How many?", "```python\ny = 2 * 3\nprint(y)\n```"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TEXTS * 20, vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return build_model(tokenizer, hidden_size=32, num_layers=1, heads=4, kv_heads=2, intermediate=64).eval()


def _draws(processor, logits: torch.Tensor, rows: int) -> torch.Tensor:
    out = processor(None, logits.expand(rows, -1).clone())
    finite = torch.isfinite(out)
    assert finite.sum(dim=1).eq(1).all()  # exactly one token left per row, at 0
    assert out[finite].eq(0).all()
    return finite.float().argmax(dim=1)


def test_the_draw_follows_the_softmax():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]])
    tokens = _draws(CDFSampling(), logits, 40_000)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    expected = torch.softmax(logits[0], dim=0)
    assert freq[4] == 0  # no mass, never drawn
    assert torch.allclose(freq, expected, atol=0.01), (freq, expected)


def test_a_draw_at_the_top_of_the_cdf_takes_the_last_token_with_mass(monkeypatch):
    logits = torch.tensor([[0.0, 0.0, float("-inf"), float("-inf")]])
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.ones(*shape))  # rounding's worst case
    assert _draws(CDFSampling(), logits, 3).tolist() == [1, 1, 1]


def test_temperature_and_top_p_are_transformers_warpers():
    torch.manual_seed(1)
    logits = torch.tensor([[3.0, 2.5, 1.0, 0.5, 0.0, -2.0]])
    processor = cdf_sampler(0.7, top_p=0.8)
    warped = TopPLogitsWarper(0.8)(None, TemperatureLogitsWarper(0.7)(None, logits.clone()))
    nucleus = set(torch.isfinite(warped[0]).nonzero().flatten().tolist())
    assert len(nucleus) < logits.shape[1]  # the case cuts something
    tokens = _draws(processor, logits, 20_000)
    assert set(tokens.tolist()) == nucleus
    freq = torch.bincount(tokens, minlength=6).float() / len(tokens)
    assert torch.allclose(freq, torch.softmax(warped[0], dim=0), atol=0.015)
    assert len(cdf_sampler(0.7)) == 2  # top_p 1.0: temperature and the draw only


def test_samples_share_their_prompts_cache_without_changing_a_sample(tokenizer, model, monkeypatch):
    widths = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        ids = kwargs.get("input_ids")
        widths.append(tuple(ids.shape))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    kwargs = dict(max_new_tokens=6, batch_size=8, num_return_sequences=3, temperature=1.0, distributed=False)
    shared = generate(model, tokenizer, TEXTS, seed=3, **kwargs)
    prompt_width = widths[0][1] + 1
    # the prompts (but their last token) once, then only the last token of every sample's row
    assert widths[0] == (3, prompt_width - 1) and widths[1] == (9, 1)
    assert all(rows == 9 and width == 1 for rows, width in widths[1:])
    widths.clear()
    monkeypatch.setattr(generation, "shared_prompt_cache", lambda *a: None)
    alone = generate(model, tokenizer, TEXTS, seed=3, **kwargs)
    assert widths[0] == (9, prompt_width)  # each sample computes its prompt again
    assert alone == shared
    assert all(len(texts) == 3 for texts in shared)
    assert generate(model, tokenizer, TEXTS, seed=3, **kwargs) == shared  # seeded
    assert generate(model, tokenizer, TEXTS, seed=4, **kwargs) != shared


def test_greedy_decoding_is_unchanged_by_the_sampler(tokenizer, model, monkeypatch):
    calls = []
    real = model.generate

    def recording_generate(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    out = generate(model, tokenizer, TEXTS, max_new_tokens=5, batch_size=8, distributed=False)
    assert calls[0]["logits_processor"] is None and calls[0]["past_key_values"] is None
    assert calls[0]["do_sample"] is False and len(out) == 3


def test_batches_follow_the_expected_completion_lengths(tokenizer, model, monkeypatch):
    batches = []
    real = model.generate

    def recording_generate(**kwargs):
        batches.append(tokenizer.batch_decode(kwargs["input_ids"], skip_special_tokens=True))
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    prompts = ["a", "bb bb", "ccc ccc ccc", "dddd dddd dddd dddd"]
    generate(model, tokenizer, prompts, max_new_tokens=2, batch_size=2, distributed=False)
    by_length = [sorted(b) for b in batches]
    batches.clear()
    generate(model, tokenizer, prompts, max_new_tokens=2, batch_size=2, distributed=False,
             expected_tokens=[40, 3, 50, 1])
    assert [sorted(b) for b in batches] != by_length
    assert [len(b) for b in batches] == [2, 2]
    first = " ".join(batches[0])
    assert "dddd" in first and "bb" in first  # the two expected to stop first share a batch
    with pytest.raises(ValueError, match="4 prompts but 2 expected_tokens"):
        generate(model, tokenizer, prompts, max_new_tokens=2, distributed=False, expected_tokens=[1, 2])
