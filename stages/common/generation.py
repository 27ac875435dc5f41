"""Batched generation with transformers.

``generate`` samples (or decodes greedily) chat prompts in length-sorted batches; with several
processes (``accelerate launch``) each rank takes a shard and the results are gathered, so every
rank returns the full list. The pass@1 measurement every stage reports on top of it (generation,
then the sandbox) is ``stages.harness.policy.evaluate_pot``.
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from stages.common.pot import build_messages


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
    with torch.inference_mode():
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
