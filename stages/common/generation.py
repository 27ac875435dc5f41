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


def cdf_sampler(temperature: float, top_p: float = 1.0) -> Any:
    """The logits processors of a sampling step whose draw is made by :class:`CDFSampling`: transformers'
    temperature and top-p warpers, then the draw. Run with ``do_sample=False`` (the greedy step then
    takes the one token the draw left)."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper  # deferred: heavy

    processors = [TemperatureLogitsWarper(temperature)]
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    return LogitsProcessorList([*processors, CDFSampling()])


class CDFSampling:
    """A logits processor that draws the next token from ``softmax(scores)`` and leaves only that
    token possible, so that a greedy step emits it: one uniform number per row against the row's
    cumulative distribution (inverse-CDF sampling, the same distribution as transformers' own draw).

    Written here because transformers draws with ``torch.multinomial``, which on CPU costs about 2 ms
    per decoding step for 120 rows of the tiny model's 905-token vocabulary (as much as a third of the
    step; ``torch.exponential_`` for a Gumbel draw costs the same), while this draw costs 0.06 ms:
    eval with repair and every stage that samples spend most of their time in such steps
    (docs/eval.md). It uses torch's global generator, which :func:`generate` seeds."""

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch  # deferred: heavy import

        probs = torch.softmax(scores.float(), dim=-1)
        cdf = probs.cumsum(dim=-1)
        draw = torch.rand(cdf.shape[0], 1, device=cdf.device) * cdf[:, -1:]
        token = torch.searchsorted(cdf, draw, right=True)
        # rounding can put the draw at the very top of the cdf: take the last token that has any mass
        last = cdf.shape[1] - 1 - (probs > 0).flip(dims=[1]).to(torch.int8).argmax(dim=1, keepdim=True)
        token = torch.minimum(token, last)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, token, 0.0)


def shared_prompt_cache(model: Any, input_ids: Any, attention_mask: Any, copies: int) -> Any:
    """The key/value cache of every prompt but its last token, computed once per prompt and repeated
    for its ``copies`` samples (row ``i * copies + k`` is prompt ``i``'s): ``model.generate`` given it
    and the repeated prompts runs only the last prompt token and the new ones (transformers' prompt
    reuse). transformers itself repeats the prompts before the first forward pass, so each sample
    would compute its prompt again: a third of a revision round's time with 3 candidates of 180-token
    prompts on CPU. Positions follow the left padding, as ``generate`` numbers them."""
    import torch  # deferred: heavy import

    head, mask = input_ids[:, :-1], attention_mask[:, :-1]
    with torch.inference_mode():
        out = model(input_ids=head, attention_mask=mask, position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0),
                    use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(copies)
    return cache


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
    expected_tokens: Sequence[int] | None = None,
) -> list[list[str]]:
    """Completions for already-templated ``prompts``: ``num_return_sequences`` per prompt.

    Batches take prompts in order of length; with ``expected_tokens`` (a guess of each prompt's
    completion length, e.g. a revision's remaining program), in order of that guess first: a batch
    decodes until its longest sequence stops, so prompts expected to stop early share batches."""
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
    if expected_tokens is not None and len(expected_tokens) != len(prompts):
        raise ValueError(f"generate: {len(prompts)} prompts but {len(expected_tokens)} expected_tokens")
    order = sorted(indices, key=lambda i: (expected_tokens[i] if expected_tokens is not None else 0, len(prompts[i])))
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
            cache = None
            if sample:  # the draw is CDFSampling's (see there), the step greedy; each sample its own row
                if num_return_sequences > 1 and enc["input_ids"].shape[1] > 1:
                    cache = shared_prompt_cache(model, enc["input_ids"], enc["attention_mask"],
                                                num_return_sequences)
                enc = {k: v.repeat_interleave(num_return_sequences, dim=0) for k, v in enc.items()}
            out = model.generate(
                **enc,
                past_key_values=cache,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=cdf_sampler(temperature, top_p) if sample else None,
                num_return_sequences=1 if sample else num_return_sequences,
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
