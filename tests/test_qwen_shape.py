"""The Qwen2.5-Math-1.5B-shaped test model's tokenizer and config (stages/common/qwen_shape.py)."""

from __future__ import annotations

import json

import pytest

from stages.common import qwen_shape
from stages.common.memory import KNOWN_MODEL_CONFIGS
from stages.common.pot import build_messages


@pytest.fixture(scope="module")
def tokenizer():
    return qwen_shape.build_tokenizer()


def test_tokenizer_has_qwen25_layout(tokenizer):
    assert len(tokenizer) == qwen_shape.BPE_TOKENS + len(qwen_shape.ADDED_TOKENS) == 151_665
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert ids == {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"  # the base model's, as on the hub
    assert len(tokenizer) <= KNOWN_MODEL_CONFIGS[qwen_shape.REFERENCE_MODEL]["vocab_size"]  # the padded embedding


def test_chat_template_is_qwen25_math_chatml(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "1+1?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == ("<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}."
                    "<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n")
    messages = build_messages("Tom has 3 apples. How many?") + [{"role": "assistant", "content": "```python\nprint(3)\n```"}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert full.endswith("<|im_start|>assistant\n```python\nprint(3)\n```<|im_end|>\n")
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == full  # byte-level BPE round trip
    assert ids.count(151644) == 3 and max(ids) < len(tokenizer)


def test_reference_config_keeps_the_shape_with_fewer_layers():
    cfg = qwen_shape.reference_config(2)
    ref = KNOWN_MODEL_CONFIGS[qwen_shape.REFERENCE_MODEL]
    assert cfg["num_hidden_layers"] == 2 and ref["num_hidden_layers"] == 28
    same = ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size",
            "tie_word_embeddings", "rope_theta", "max_position_embeddings")
    assert {k: cfg[k] for k in same} == {k: ref[k] for k in same}
    assert json.dumps(cfg)  # a plain config.json mapping


def test_build_refuses_a_different_build(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "mathforge_qwen_shape.json").write_text(json.dumps({"num_layers": 3}))
    with pytest.raises(FileExistsError, match="built with"):
        qwen_shape.build_qwen_shape_checkpoint(out, num_layers=2)
