"""The embedded default model: a tiny Qwen2 causal LM and its byte-level BPE tokenizer.

No hub is reachable here, so the default pipeline builds its base model from local text: a
byte-level BPE tokenizer trained (with the ``tokenizers`` library) on the embedded arithmetic
task, using Qwen2's own pre-tokenization (NFC, the Qwen2 split regex with single digits, byte
level) and a ChatML chat template of Qwen2's shape, and a randomly initialised
``Qwen2ForCausalLM``. Both are saved as an ordinary Hugging Face checkpoint, so every stage
loads it with ``AutoModelForCausalLM`` / ``AutoTokenizer`` exactly as it loads
Qwen2.5-Math-1.5B.

The default sizes are tuned so that supervised fine-tuning on the arithmetic task reaches a
high greedy pass@1 within a couple of minutes on two CPU cores.

    python -m stages.common.tiny --out runs/base/tiny [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from stages.common.arith import corpus_text
from stages.common.data import apply_umask

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

# Qwen2's pre-tokenization regex (transformers' Qwen2Tokenizer): words, single digits,
# punctuation runs, newlines, spaces.
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2's ChatML template (without tools), with {% generation %} markers around what the
# assistant writes, its <|im_end|> included, so that TRL's ``assistant_only_loss`` trains the
# model to stop.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Tuned on the arithmetic task (recipes/tiny/sft.yaml reaches >= 90% pass@1 in about 3 min on
# 2 CPU cores); about 0.4M parameters. Two wide layers learn the copying faster than four narrow ones.
DEFAULT_SIZES: dict[str, int] = {
    "vocab_size": 1024,
    "hidden_size": 128,
    "num_layers": 2,
    "heads": 8,
    "kv_heads": 4,
    "intermediate": 256,
    "max_position_embeddings": 512,
}
_BUILD_FILE = "mathforge_tiny.json"  # written last: its presence marks a complete build


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` with ChatML special tokens and template.

    ``<|endoftext|>`` is the padding token, ``<|im_end|>`` the end of a chat turn (eos).
    """
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # Offsets must map back onto the text: the chat template's assistant mask relies on them.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # so the markers in ``texts`` are not split
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=DEFAULT_SIZES["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = DEFAULT_SIZES["hidden_size"],
    num_layers: int = DEFAULT_SIZES["num_layers"],
    heads: int = DEFAULT_SIZES["heads"],
    kv_heads: int = DEFAULT_SIZES["kv_heads"],
    intermediate: int = DEFAULT_SIZES["intermediate"],
    max_position_embeddings: int = DEFAULT_SIZES["max_position_embeddings"],
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM sized for ``tokenizer`` (tied embeddings, fp32)."""
    if hidden_size % heads or heads % kv_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must divide by heads ({heads}) and heads by "
                         f"kv_heads ({kv_heads})")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
        use_sliding_window=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def build_tiny_checkpoint(out_dir: str | os.PathLike, seed: int = 0, **sizes: int) -> Path:
    """Build the tokenizer and model and save them as an HF checkpoint in ``out_dir``.

    Deterministic for a seed; built in ``<out_dir>.partial`` and renamed when complete; a
    complete build with the same seed and sizes is reused, a different one is an error.
    """
    unknown = sorted(set(sizes) - set(DEFAULT_SIZES))
    if unknown:
        raise TypeError(f"unknown size argument(s) {unknown}; known: {sorted(DEFAULT_SIZES)}")
    spec = {"seed": seed, **DEFAULT_SIZES, **sizes}
    out = Path(out_dir)
    marker = out / _BUILD_FILE
    if out.exists():
        if not marker.is_file():
            raise FileExistsError(f"{out} exists but is not a tiny-model build (no {_BUILD_FILE})")
        found = json.loads(marker.read_text())
        if found != spec:
            raise FileExistsError(f"{out} holds a tiny model built with {found}, not {spec}")
        return out

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted build
    partial.mkdir(parents=True)
    # One document per chat turn keeps the special tokens whole for the BPE trainer.
    texts = corpus_text().split("\n<|im_start|>")
    tokenizer = build_tokenizer(texts, vocab_size=spec["vocab_size"])
    model = build_model(
        tokenizer, hidden_size=spec["hidden_size"], num_layers=spec["num_layers"], heads=spec["heads"],
        kv_heads=spec["kv_heads"], intermediate=spec["intermediate"],
        max_position_embeddings=spec["max_position_embeddings"], seed=seed,
    )
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / _BUILD_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    apply_umask(partial)  # model.safetensors comes 0600 from safetensors' temporary file
    os.replace(partial, out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m stages.common.tiny", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--seed", type=int, default=0)
    for name, default in DEFAULT_SIZES.items():
        p.add_argument(f"--{name}", type=int, default=default)
    args = vars(p.parse_args(argv))
    out, seed = args.pop("out"), args.pop("seed")
    path = build_tiny_checkpoint(out, seed=seed, **args)
    n = sum(t.numel() for t in Qwen2ForCausalLM.from_pretrained(path).parameters())
    print(f"tiny model ({n:,} parameters) at {path}")


if __name__ == "__main__":
    main()
