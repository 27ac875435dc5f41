"""The embedded tiny model and tokenizer: round trips, chat template, HF loading, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM
from trl.chat_template_utils import (
    has_generation_markers,
    is_chat_template_prefix_preserving,
    is_chat_template_stop_token_trained,
)

from stages.common.arith import corpus_text, generate_problems
from stages.common.data import current_umask
from stages.common.pot import SYSTEM_PROMPT, build_messages, format_completion
from stages.common.tiny import DEFAULT_SIZES, build_model, build_tiny_checkpoint, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
SMALL = {"hidden_size": 32, "num_layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64, "vocab_size": 600}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(corpus_text(n=1000).split("\n<|im_start|>"), vocab_size=600)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", seed=0, **SMALL)


def test_tokenizer_round_trips_any_text(tokenizer):
    texts = [r["question"] + "\n" + format_completion(r["program"]) for r in generate_problems(20, "test")]
    texts += ["Ünïcödé ✓ 你好 \t tabs\n\nand 12345.678 $-9", "def f(x):\n    return x ** 2  # ok\n"]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_tokenizer_fits_the_task():
    tokenizer = build_tokenizer(corpus_text().split("\n<|im_start|>"), vocab_size=DEFAULT_SIZES["vocab_size"])
    # Words of the task are single tokens (digits are always split): a question costs far fewer
    # tokens than bytes, and the nouns a program copies into variable names are whole tokens.
    rows = generate_problems(20, "train", seed=0, levels=(3,))
    for row in rows:
        words = [w for w in row["question"].replace(".", " ").replace("?", " ").split() if w.isalpha()]
        single = [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]
        assert len(single) >= 0.8 * len(words), (row["question"], set(words) - set(single))
        n = len(tokenizer(row["question"], add_special_tokens=False)["input_ids"])
        assert n < len(row["question"]) / 2.5
    assert len(tokenizer(SYSTEM_PROMPT)["input_ids"]) < 40


def test_special_tokens(tokenizer):
    for tok in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert len(tokenizer(tok, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    assert tokenizer("12 apples")["input_ids"] == tokenizer("12 apples", add_special_tokens=False)["input_ids"]


def test_chat_template_is_chatml(tokenizer):
    msgs = build_messages("Ann has 3 pens. How many?")
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\nAnn has 3 pens. How many?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_system = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert no_system == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                         "<|im_start|>user\nhi<|im_end|>\n")
    full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": "```python\nprint(3)\n```"}],
                                         tokenize=False)
    assert full == text + "```python\nprint(3)\n```<|im_end|>\n"


def test_assistant_mask_covers_the_completion_and_its_end(tokenizer):
    completion = format_completion("pens = 3\nprint(pens)")
    msgs = build_messages("Ann has 3 pens. How many?") + [{"role": "assistant", "content": completion}]
    out = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == completion + "<|im_end|>"
    # What TRL's SFTTrainer checks before assistant-only loss.
    assert has_generation_markers(tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(tokenizer)
    assert is_chat_template_prefix_preserving(tokenizer)


def test_checkpoint_loads_with_auto_classes(checkpoint, tokenizer):
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert isinstance(model, Qwen2ForCausalLM)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size) == (32, 2, 2, 1, 64)
    assert cfg.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert cfg.vocab_size == len(tok)
    assert cfg.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == model.generation_config.eos_token_id
    assert cfg.pad_token_id == tok.pad_token_id
    # The tokenizer comes back identical: same vocabulary, encoding and template.
    built = build_tokenizer(corpus_text().split("\n<|im_start|>"), vocab_size=600)
    assert tok.get_vocab() == built.get_vocab()
    assert tok.chat_template == built.chat_template
    sample = corpus_text(n=30) + " Ünïcödé 123456"
    assert tok(sample)["input_ids"] == built(sample)["input_ids"]


def test_generation_works(checkpoint):
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tok.padding_side = "left"
    prompts = [tok.apply_chat_template(build_messages(r["question"]), add_generation_prompt=True, tokenize=False)
               for r in generate_problems(2, "test")]
    x = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**x, max_new_tokens=8, do_sample=False)
    assert out.shape[0] == 2 and 1 <= out.shape[1] - x["input_ids"].shape[1] <= 8
    assert all(isinstance(s, str) for s in tok.batch_decode(out[:, x["input_ids"].shape[1]:]))


def test_building_twice_gives_identical_files(tmp_path, checkpoint):
    again = build_tiny_checkpoint(tmp_path / "again", seed=0, **SMALL)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (checkpoint / name).read_bytes(), name
    other = build_tiny_checkpoint(tmp_path / "other", seed=1, **SMALL)
    assert (other / "model.safetensors").read_bytes() != (checkpoint / "model.safetensors").read_bytes()


def test_built_files_get_the_permissions_the_umask_gives(checkpoint):
    # safetensors writes model.safetensors through a 0600 temporary file; the build widens it
    wanted = 0o666 & ~current_umask()
    modes = {f.name: f.stat().st_mode & 0o777 for f in checkpoint.iterdir() if f.is_file()}
    assert "model.safetensors" in modes and modes == dict.fromkeys(modes, wanted)


def test_complete_build_is_reused_and_mismatch_is_an_error(tmp_path):
    out = build_tiny_checkpoint(tmp_path / "m", seed=0, **SMALL)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_checkpoint(out, seed=0, **SMALL) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="built with"):
        build_tiny_checkpoint(out, seed=1, **SMALL)
    with pytest.raises(TypeError, match="unknown size"):
        build_tiny_checkpoint(tmp_path / "n", layers=3)
    (tmp_path / "foreign").mkdir()
    with pytest.raises(FileExistsError, match="not a tiny-model build"):
        build_tiny_checkpoint(tmp_path / "foreign", **SMALL)


def test_interrupted_build_is_replaced(tmp_path):
    partial = tmp_path / "m.partial"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half a file")
    out = build_tiny_checkpoint(tmp_path / "m", seed=0, **SMALL)
    assert not partial.exists()
    AutoModelForCausalLM.from_pretrained(out)


def test_build_model_rejects_bad_head_counts(tokenizer):
    with pytest.raises(ValueError, match="heads"):
        build_model(tokenizer, hidden_size=30, heads=4, kv_heads=2)
    model = build_model(tokenizer, hidden_size=32, num_layers=1, heads=2, kv_heads=1, intermediate=32, seed=3)
    again = build_model(tokenizer, hidden_size=32, num_layers=1, heads=2, kv_heads=1, intermediate=32, seed=3)
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_cli(tmp_path):
    sizes = [f"--{k}={v}" for k, v in SMALL.items()]
    res = subprocess.run([sys.executable, "-m", "stages.common.tiny", "--out", str(tmp_path / "cli"),
                          "--seed", "2", *sizes], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "parameters" in res.stdout
    spec = json.loads((tmp_path / "cli" / "mathforge_tiny.json").read_text())
    assert spec["seed"] == 2 and spec["hidden_size"] == 32
