"""Batched generation with transformers and the PoT evaluation every stage reports.

``generate`` samples (or decodes greedily) chat prompts in length-sorted batches; with several
processes (``accelerate launch``) each rank takes a shard and the results are gathered, so every
rank returns the full list. ``evaluate_pot`` is the one pass@1 measurement shared by the stages
(SFT's report, GRPO's and length-RL's before/after), so the same decoding is compared everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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
    import torch  # noqa: PLC0415
    from tqdm.auto import tqdm  # noqa: PLC0415

    state = None
    indices = list(range(len(prompts)))
    if distributed:
        from accelerate import PartialState  # noqa: PLC0415

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
        from accelerate.utils import gather_object  # noqa: PLC0415

        merged: dict[int, list[str]] = {}
        for part in gather_object([results]):
            merged.update(part)
        results = merged
    return [results[i] for i in range(len(prompts))]


def evaluate_pot(
    model,
    tokenizer,
    problems: Sequence[dict],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    num_samples: int = 1,
    temperature: float = 0.0,
    seed: int | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], list[dict]]:
    """Greedy (or sampled) PoT pass@1 of a model on Problem rows, executed in the sandbox.

    Returns (metrics, details): metrics has ``pass@1``, its 95% Wilson interval, mean completion
    tokens and the share of completions without a program or with an execution error; details has
    one row per problem and sample."""
    from rewards import score_pot  # noqa: PLC0415

    prompts = chat_prompts(tokenizer, [p["question"] for p in problems])
    completions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           num_return_sequences=num_samples, temperature=temperature, seed=seed,
                           progress=progress)
    flat = [(p, c) for p, cs in zip(problems, completions, strict=True) for c in cs]
    scores = score_pot([c for _, c in flat], [p["answer"] for p, _ in flat])
    details = []
    for (p, c), s in zip(flat, scores, strict=True):
        details.append({"id": p["id"], "question": p["question"], "answer": p["answer"], "completion": c,
                        "executed_answer": s.answer, "correct": bool(s.correct), "status": s.status,
                        "error_type": s.error_type,
                        "n_tokens": len(tokenizer(c, add_special_tokens=False)["input_ids"])})
    n = len(details)
    k = sum(d["correct"] for d in details)
    lo, hi = wilson_interval(k, n)
    metrics = {
        "n": n,
        "pass@1": k / n if n else 0.0,
        "pass@1_ci95": [lo, hi],
        "mean_completion_tokens": sum(d["n_tokens"] for d in details) / n if n else 0.0,
        "no_program_rate": sum(d["status"] == "no_code" for d in details) / n if n else 0.0,
        "exec_error_rate": sum(d["status"] not in ("ok", "no_code") for d in details) / n if n else 0.0,
    }
    return metrics, details


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
