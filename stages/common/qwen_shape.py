"""A randomly initialised model of Qwen2.5-Math-1.5B's shape, with a tokenizer of its vocabulary size.

No hub is reachable here, so the checks that need the reference model's architecture (its width,
its 151,936-row embedding, grouped KV heads, tied embeddings, the ChatML chat template with
``<|endoftext|>`` as eos) build one locally: Qwen2.5-Math-1.5B's ``config.json`` with fewer
layers (the tests use 2; the GPU check uses all 28) and random weights, saved as an ordinary HF
checkpoint in bf16, as the real one is.

The tokenizer mirrors Qwen2.5's layout: 151,643 byte-level BPE tokens (Qwen2's pre-tokenization,
:mod:`stages.common.tiny`'s builder trained on the embedded task, then padded with merges of
existing tokens to the real count), then Qwen2.5's 22 added tokens at their real ids
(``<|endoftext|>`` = 151643, ``<|im_start|>`` = 151644, ``<|im_end|>`` = 151645, ...): 151,665
tokens, and the model's embedding has 151,936 rows (the real checkpoint pads it the same way).
The chat template is Qwen2.5-Math's (ChatML, tools branch included, no ``{% generation %}``
markers), so the stages take the same chat-template path as on the real model.

    python -m stages.common.qwen_shape --out /tmp/qwen-shape [--layers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from stages.common.arith import corpus_text
from stages.common.memory import KNOWN_MODEL_CONFIGS

REFERENCE_MODEL = "Qwen/Qwen2.5-Math-1.5B"
BPE_TOKENS = 151_643  # Qwen2.5's byte-level BPE vocabulary, before its added tokens
# Qwen2.5's added tokens in id order from 151643; the first 14 are special (never split, skipped
# when decoding with skip_special_tokens), the rest are ordinary added tokens.
ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
SPECIAL_ADDED = 14

# Qwen2.5-Math's chat template (tokenizer_config.json of the Qwen2.5-Math models): ChatML, a
# default system prompt asking for a boxed answer, and the Qwen2.5 tool-call branches.
CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'Please reason step by step, and put your final answer within \\\\boxed{}.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nPlease reason step by step, and put your final answer within \\\\boxed{}.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

_BUILD_FILE = "mathforge_qwen_shape.json"  # written last: its presence marks a complete build
_TRAINED_BPE = 4096  # merges learnt from the embedded task; the rest of the vocabulary is filler


def reference_config(num_layers: int | None = None, overrides: dict | None = None) -> dict:
    """Qwen2.5-Math-1.5B's config.json values, optionally with fewer layers or other sizes
    (``overrides``: config.json keys, e.g. a narrow width for a smoke run)."""
    cfg = {**KNOWN_MODEL_CONFIGS[REFERENCE_MODEL], **(overrides or {})}
    if num_layers is not None:
        cfg["num_hidden_layers"] = num_layers
        cfg["max_window_layers"] = min(cfg["max_window_layers"], num_layers)
    return cfg


def build_tokenizer(bpe_tokens: int = BPE_TOKENS):
    """A fast tokenizer laid out like Qwen2.5's: ``bpe_tokens`` byte-level BPE tokens, then the 22
    added tokens, eos and pad ``<|endoftext|>``, Qwen2.5-Math's chat template.

    The BPE part is :func:`stages.common.tiny.build_tokenizer` trained on the embedded task, with
    its vocabulary extended by merges of pairs of existing tokens (deterministic) up to
    ``bpe_tokens``: a real BPE of the real size, without needing Qwen's merges file."""
    from tokenizers import Tokenizer  # deferred: heavy
    from transformers import PreTrainedTokenizerFast  # deferred: heavy

    from stages.common import tiny  # deferred: imports torch and transformers

    trained = tiny.build_tokenizer(corpus_text().split("\n<|im_start|>"), vocab_size=_TRAINED_BPE)
    spec = json.loads(trained.backend_tokenizer.to_str())
    specials = set(tiny.SPECIAL_TOKENS)
    old_vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in old_vocab if t not in specials]
    if bpe_tokens < len(tokens):
        raise ValueError(f"bpe_tokens ({bpe_tokens}) is below the trained vocabulary ({len(tokens)})")
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    merges = [m for m in merges if m[0] + m[1] not in specials]  # the corpus spells the markers out
    known = set(tokens)
    base = list(tokens)
    for left in base:  # filler merges: pairs of trained tokens, in id order, lowest priority
        if len(tokens) >= bpe_tokens:
            break
        for right in base:
            joined = left + right
            if joined in known:
                continue
            known.add(joined)
            tokens.append(joined)
            merges.append((left, right))
            if len(tokens) >= bpe_tokens:
                break
    spec["model"]["vocab"] = {t: i for i, t in enumerate(tokens)}
    spec["model"]["merges"] = [list(m) for m in merges]
    spec["added_tokens"] = [
        {"id": bpe_tokens + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": i < SPECIAL_ADDED}
        for i, t in enumerate(ADDED_TOKENS)
    ]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(ADDED_TOKENS[1:SPECIAL_ADDED]),
        chat_template=CHAT_TEMPLATE,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        errors="replace",
    )
    return tok


def build_model(num_layers: int = 2, seed: int = 0, dtype: str = "bfloat16", device: str | None = None,
                overrides: dict | None = None):
    """A randomly initialised ``Qwen2ForCausalLM`` of the reference config with ``num_layers``."""
    import torch  # deferred: heavy
    from transformers import Qwen2Config, Qwen2ForCausalLM  # deferred: heavy

    values = reference_config(num_layers, overrides)
    config = Qwen2Config(**{k: v for k, v in values.items() if k not in ("architectures", "model_type")})
    config.dtype = dtype
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config.bos_token_id = values["bos_token_id"]
    model.generation_config.eos_token_id = values["eos_token_id"]
    model.generation_config.pad_token_id = None
    return model


def build_qwen_shape_checkpoint(out_dir: str | os.PathLike, *, num_layers: int = 2, seed: int = 0,
                                dtype: str = "bfloat16", overrides: dict | None = None,
                                device: str | None = None) -> Path:
    """Build and save the tokenizer and a random model of the reference shape in ``out_dir``.

    Deterministic for a seed; built in ``<out_dir>.partial`` and renamed when complete; a complete
    build with the same settings is reused, a different one is an error."""
    spec = {"reference": REFERENCE_MODEL, "num_layers": num_layers, "seed": seed, "dtype": dtype,
            "bpe_tokens": BPE_TOKENS, "overrides": overrides or {}}
    out = Path(out_dir)
    marker = out / _BUILD_FILE
    if out.exists():
        if not marker.is_file():
            raise FileExistsError(f"{out} exists but is not a Qwen-shape build (no {_BUILD_FILE})")
        found = json.loads(marker.read_text())
        if found != spec:
            raise FileExistsError(f"{out} holds a Qwen-shape model built with {found}, not {spec}")
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted build
    partial.mkdir(parents=True)
    tokenizer = build_tokenizer()
    model = build_model(num_layers, seed=seed, dtype=dtype, device=device, overrides=overrides)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / _BUILD_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    os.replace(partial, out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.common.qwen_shape", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    args = parser.parse_args(argv)
    path = build_qwen_shape_checkpoint(args.out, num_layers=args.layers, seed=args.seed, dtype=args.dtype)
    print(f"{REFERENCE_MODEL}-shaped model ({args.layers} layers, random weights) at {path}")


if __name__ == "__main__":
    main()
