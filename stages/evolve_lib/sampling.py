"""Sampling and scoring for the evolve stage: the generation backends (batched transformers
``generate``, or vLLM on a GPU), prompts that continue a partly written program, and the scorer
that runs every solution in the sandbox (through ``rewards``) and has the PRM score its steps.

Every backend returns, per prompt, ``n`` (text, generated tokens) pairs; times are accumulated
so that the stage reports generated tokens per second and the share of sandbox and PRM time.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rewards import score_pot
from stages.common.generation import chat_prompts, generate
from stages.common.pot import extract_program
from stages.common.steps import split_program
from stages.evolve_lib.keep import aggregate

log = logging.getLogger("mathforge.evolve")

FENCE = "```python\n"


@dataclass
class Timings:
    """Seconds and generated tokens of one process's share of the work."""

    generation_s: float = 0.0
    sandbox_s: float = 0.0
    prm_s: float = 0.0
    generated_tokens: int = 0
    generate_calls: int = 0

    def add(self, other: Timings) -> None:
        for name in ("generation_s", "sandbox_s", "prm_s", "generated_tokens", "generate_calls"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_json(self) -> dict[str, Any]:
        return {"generation_s": round(self.generation_s, 3), "sandbox_s": round(self.sandbox_s, 3),
                "prm_s": round(self.prm_s, 3), "generated_tokens": self.generated_tokens,
                "generate_calls": self.generate_calls}


# ---------------------------------------------------------------------------------------------
# prompts


def continuation_prefix(steps: Sequence[str]) -> str:
    """The start of an assistant turn that already holds ``steps`` (whole statements) of the
    program; the policy continues it. Empty for no step (a fresh solution)."""
    return FENCE + "\n".join(steps) + "\n" if steps else ""


def prompt_texts(tokenizer: Any, questions: Sequence[str], prefixes: Sequence[Sequence[str]] | None = None) -> list[str]:
    """The PoT chat prompt of each question with the generation prompt, followed by the program
    prefix the policy is to continue (the same chat prompt the policy was trained and is
    evaluated on; generation then continues the assistant turn)."""
    base = chat_prompts(tokenizer, questions)
    if prefixes is None:
        return base
    return [b + continuation_prefix(p) for b, p in zip(base, prefixes, strict=True)]


# ---------------------------------------------------------------------------------------------
# generation backends


class TransformersSampler:
    """Batched transformers ``generate`` (``stages.common.generation``) on this process's share
    of the prompts (the stage shards problems across processes itself)."""

    backend = "transformers"

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def generate(self, prompts: Sequence[str], n: int, *, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int | None) -> list[list[tuple[str, int]]]:
        if not prompts:
            return []
        outs = generate(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens,
                        batch_size=self.batch_size, num_return_sequences=n, temperature=temperature, top_p=top_p,
                        seed=seed, distributed=False)
        flat = [t for texts in outs for t in texts]
        lengths = [len(ids) for ids in self.tokenizer(flat, add_special_tokens=False)["input_ids"]]
        it = iter(lengths)
        return [[(t, next(it)) for t in texts] for texts in outs]

    def close(self) -> None:
        pass


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The end-of-turn ids vLLM stops on (the same tokens as ``stages.common.generation``)."""
    vocab = tokenizer.get_vocab()
    ids = {tokenizer.eos_token_id, *(vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab)}
    return sorted(i for i in ids if i is not None)


class VLLMSampler:
    """vLLM offline generation (``use_vllm: true``, one GPU process): the policy is loaded from a
    folder, so each round starts one on that round's saved policy; the generated token counts
    come from vLLM itself."""

    backend = "vllm"

    def __init__(self, model_path: str, tokenizer: Any, *, gpu_memory_utilization: float, dtype: str | None,
                 seed: int, max_model_len: int | None = None):
        from vllm import LLM  # deferred: heavy, and only with the [vllm] extra

        self.tokenizer = tokenizer
        self.stop_ids = stop_token_ids(tokenizer)
        self.llm = LLM(model=model_path, tokenizer=model_path, gpu_memory_utilization=gpu_memory_utilization,
                       dtype=dtype or "auto", seed=seed, max_model_len=max_model_len, enable_prefix_caching=True)

    def generate(self, prompts: Sequence[str], n: int, *, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int | None) -> list[list[tuple[str, int]]]:
        from vllm import SamplingParams  # deferred: heavy, and only with the [vllm] extra

        if not prompts:
            return []
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                                stop_token_ids=self.stop_ids, skip_special_tokens=True)
        outs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [[(c.text, len(c.token_ids)) for c in o.outputs] for o in outs]

    def close(self) -> None:
        import torch  # deferred: heavy

        del self.llm  # vLLM frees its memory once the engine is collected
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# scoring


def solution_steps(completion: str) -> list[str]:
    """The PRM steps of a PoT completion (its program's top-level statements); none without a
    program (such a solution is discarded as ``no_program`` and not scored)."""
    program = extract_program(completion)
    return split_program(program) if program is not None else []


@dataclass
class SolutionScorer:
    """Runs solutions in the sandbox (``rewards.score_pot``, one batch) and has the PRM score their
    steps (one batched call), timing both."""

    prm: Any  # an object with score_steps(questions, steps) -> list[list[float]]
    aggregation: str
    timings: Timings = field(default_factory=Timings)

    def score(self, rows: list[dict]) -> list[dict]:
        """Adds ``executed_answer``, ``correct`` (None when the gold cannot be read), ``status``,
        ``error_type``, ``steps``, ``prm_scores`` and ``prm_score`` (the aggregate) to every row."""
        if not rows:
            return rows
        t0 = time.perf_counter()
        results = score_pot([r["completion"] for r in rows], [r["answer"] for r in rows])
        t1 = time.perf_counter()
        for row, res in zip(rows, results, strict=True):
            row.update(executed_answer=res.answer, correct=res.correct, status=res.status, error_type=res.error_type,
                       steps=solution_steps(row["completion"]))
        scored = [r for r in rows if r["steps"]]
        scores = self.prm.score_steps([r["question"] for r in scored], [r["steps"] for r in scored]) if scored else []
        t2 = time.perf_counter()
        for row in rows:
            row["prm_scores"] = []
        for row, s in zip(scored, scores, strict=True):
            row["prm_scores"] = [round(float(x), 6) for x in s]
        for row in rows:
            row["prm_score"] = aggregate(row["prm_scores"], self.aggregation)
        self.timings.sandbox_s += t1 - t0
        self.timings.prm_s += t2 - t1
        return rows
