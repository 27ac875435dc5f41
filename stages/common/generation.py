"""Batched generation with transformers.

``generate`` samples (or decodes greedily) chat prompts in length-sorted batches; with several
processes (``accelerate launch``) each rank takes a shard and the results are gathered, so every
rank returns the full list. The pass@1 measurement every stage reports on top of it (generation,
then the sandbox) is ``stages.harness.policy.evaluate_pot``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

from stages.common.pot import build_messages

log = logging.getLogger("mathforge.generation")

# Attention kernels by phase. The tiny recipes train with ``eager``: on CPU, PyTorch's SDPA backward for
# the tiny model's 32-wide heads is about 3x slower (docs/architecture.md). Generation has no backward,
# and there SDPA is the faster kernel (the grpo policy, 96 prompts x 8 samples, 160 new tokens, 2 cores:
# 6.2k tokens/s eager, 9.0k sdpa; bench/evolve_generation.py measures it). So a model that trains
# with eager generates with SDPA; any other choice (sdpa, flash attention, a kernel) is left as it is.
GENERATION_ATTENTION = {"eager": "sdpa"}


def _base_model(model: Any) -> Any:
    """The transformers model under a DDP wrapper (``.module``) or a PEFT model (``get_base_model``)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def generation_attention(model: Any) -> Iterator[str | None]:
    """Run the body (generation) with the attention kernel :data:`GENERATION_ATTENTION` maps the
    model's training kernel to, and restore the training kernel afterwards, also on an error.
    Yields the kernel in use (None for a model without a transformers config)."""
    base = _base_model(model)
    config = getattr(base, "config", None)
    current = getattr(config, "_attn_implementation", None)
    wanted = GENERATION_ATTENTION.get(current)
    if wanted is None or not hasattr(base, "set_attn_implementation"):
        yield current
        return
    try:
        base.set_attn_implementation(wanted)
    except (ValueError, ImportError) as e:  # a model class without that kernel: generate as it trains
        log.debug("generation keeps attention %s (%s)", current, e)
        yield current
        return
    try:
        yield wanted
    finally:
        base.set_attn_implementation(current)


def _stop_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def chat_prompts(tokenizer, questions: Sequence[str], few_shot=()) -> list[str]:
    """The PoT chat prompt of each question as text, with the generation prompt appended."""
    return [
        tokenizer.apply_chat_template(build_messages(q, few_shot), tokenize=False, add_generation_prompt=True)
        for q in questions
    ]


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    num_return_sequences: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    progress: bool = False,
    distributed: bool = True,
) -> list[list[str]]:
    """Completions for already-templated ``prompts``: ``num_return_sequences`` per prompt."""
    import torch  # deferred: heavy import

    state = None
    indices = list(range(len(prompts)))
    if distributed:
        from accelerate import PartialState  # deferred: heavy import

        state = PartialState()
        if state.num_processes > 1:
            indices = indices[state.process_index :: state.num_processes]
        else:
            state = None
    if seed is not None:
        torch.manual_seed(seed + (state.process_index if state else 0))
    order = sorted(indices, key=lambda i: len(prompts[i]))
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sample = temperature > 0
    results: dict[int, list[str]] = {}
    stop_ids = _stop_token_ids(tokenizer)
    bar = tqdm(total=len(order), desc="generate", disable=not progress, leave=False)
    with torch.inference_mode(), generation_attention(model):
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=top_p if sample else None,
                top_k=None,
                num_return_sequences=num_return_sequences,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            for j, i in enumerate(batch):
                results[i] = texts[j * num_return_sequences : (j + 1) * num_return_sequences]
            bar.update(len(batch))
    bar.close()
    if was_training:
        model.train()
    if state is not None:
        from accelerate.utils import gather_object  # deferred: heavy import

        merged: dict[int, list[str]] = {}
        for part in gather_object([results]):
            merged.update(part)
        results = merged
    return [results[i] for i in range(len(prompts))]
