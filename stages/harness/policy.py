"""What every policy-training stage shares: loading and saving the policy, sampling it, and the
one greedy PoT pass@1 measurement (per eval set) that every stage reports before and after, so
the same decoding is compared everywhere."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewards import score_pot
from rewards.scoring import warn_unreadable_golds
from stages.common import modeling
from stages.common.checkpoint import resolve_parent
from stages.common.data import DataFormatError, source_files
from stages.common.generation import chat_prompts, generate
from stages.common.stats import wilson_interval

log = logging.getLogger("mathforge.policy")


@dataclass
class Policy:
    """A causal LM and its tokenizer."""

    model: Any
    tokenizer: Any


def load_policy(path: str, model_args: Any = None) -> Policy:
    """The policy at ``path`` (a checkpoint, a folder or a hub id) with ``ModelConfig``'s dtype,
    attention and quantization, and its tokenizer (left padding, for generation)."""
    tokenizer = modeling.load_tokenizer(path, padding_side="left")
    return Policy(modeling.load_causal_lm(path, model_args), tokenizer)


def save_policy(policy: Policy, out: Path, export_merged: bool = False) -> None:
    modeling.save_policy(policy.model, policy.tokenizer, out, export_merged)


def synth_file(folder: str | Path) -> Path:
    """The verified solutions of a synth checkpoint (or of any checkpoint that writes them)."""
    parent = resolve_parent(str(folder))
    path = Path(parent.path) / "verified.jsonl"
    if not path.is_file():
        raise DataFormatError(folder, None, None, "is a checkpoint without verified.jsonl (not a synth output)")
    return path


def input_files(sources: Sequence[str], name: str = "verified.jsonl") -> list[str]:
    """The files that data sources read (for the manifest's input hashes): a checkpoint folder's
    ``name``, a jsonl file (field mapping or not), the local GSM8K split; generated sources
    (``arith:...``) read no file."""
    files = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            parent = resolve_parent(str(p))
            f = Path(parent.path) / name
            if f.is_file():
                files.append(str(f))
        else:
            files += source_files(src)
    return files


def sample_solutions(policy: Policy, problems: Sequence[dict], *, n: int, temperature: float, max_new_tokens: int,
                     batch_size: int, seed: int | None, top_p: float = 1.0, progress: bool = False) -> list[dict]:
    """``n`` PoT solutions per problem (greedy when ``temperature`` is 0), run in the sandbox and
    checked against the gold: rows with ``completion``, ``executed_answer``, ``correct`` (None
    when the gold cannot be read), ``status``, ``error_type``, ``n_tokens`` and ``sample``."""
    tokenizer = policy.tokenizer
    outs = generate(policy.model, tokenizer, chat_prompts(tokenizer, [p["question"] for p in problems]),
                    max_new_tokens=max_new_tokens, batch_size=batch_size, num_return_sequences=n,
                    temperature=temperature, top_p=top_p, seed=seed, progress=progress)
    flat = [(p, j, c) for p, cs in zip(problems, outs, strict=True) for j, c in enumerate(cs)]
    scores = score_pot([c for _, _, c in flat], [p["answer"] for p, _, _ in flat])
    lengths = [len(ids) for ids in tokenizer([c for _, _, c in flat], add_special_tokens=False)["input_ids"]] \
        if flat else []
    return [{"id": p["id"], "question": p["question"], "answer": p["answer"], "completion": c, "sample": j,
             "executed_answer": s.answer, "correct": s.correct, "status": s.status, "error_type": s.error_type,
             "n_tokens": k, **({"level": p["level"]} if "level" in p else {})}
            for (p, j, c), s, k in zip(flat, scores, lengths, strict=True)]


def pass_at_1(rows: Sequence[dict]) -> dict[str, Any]:
    """pass@1 with its 95% Wilson interval, mean completion tokens and the failure shares of
    scored rows. A row whose gold cannot be read (``correct`` None) is left out of ``n`` and
    counted in ``unreadable_gold``, as eval does: it is neither solved nor failed."""
    unreadable = sum(r["correct"] is None for r in rows)
    rows = [r for r in rows if r["correct"] is not None]
    n = len(rows)
    k = sum(r["correct"] for r in rows)
    lo, hi = wilson_interval(k, n)
    return {
        "n": n,
        "pass@1": k / n if n else 0.0,
        "pass@1_ci95": [lo, hi],
        "mean_completion_tokens": sum(r["n_tokens"] for r in rows) / n if n else 0.0,
        "no_program_rate": sum(r["status"] == "no_code" for r in rows) / n if n else 0.0,
        "exec_error_rate": sum(r["status"] not in ("ok", "no_code") for r in rows) / n if n else 0.0,
        "unreadable_gold": unreadable,
    }


def check_golds(problems_by_source: dict[str, list[dict]]) -> dict[str, int]:
    """How many gold answers of each source cannot be read; a source with any gets one warning
    with an example (``rewards.warn_unreadable_golds``): their problems are scored None, never 0."""
    return {source: warn_unreadable_golds([p["answer"] for p in problems], source)
            for source, problems in problems_by_source.items()}


def evaluate_pot(policy: Policy, problems: Sequence[dict], *, max_new_tokens: int = 256, batch_size: int = 32,
                 num_samples: int = 1, temperature: float = 0.0, seed: int | None = None,
                 progress: bool = False) -> tuple[dict[str, Any], list[dict]]:
    """Greedy (or sampled) PoT pass@1 of a policy on Problem rows, executed in the sandbox.

    Returns (metrics, details): see :func:`pass_at_1`; details has one row per problem and sample."""
    details = sample_solutions(policy, problems, n=num_samples, temperature=temperature,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=progress)
    return pass_at_1(details), details


def eval_identity(problems: Sequence[dict], args: Any) -> dict[str, Any]:
    """What makes two pass@1 measurements of the same weights the same: the problems and the
    greedy decoding budget and batching."""
    ids = "\n".join(f"{p['id']}\t{p['answer']}" for p in problems)
    return {"problems_sha256": hashlib.sha256(ids.encode()).hexdigest(), "max_new_tokens": args.eval_max_new_tokens,
            "batch_size": args.eval_batch_size, "decoding": "greedy"}


def parent_eval(parent_metrics: dict | None, eval_sets: dict[str, list[dict]], args: Any) -> dict[str, dict] | None:
    """The parent checkpoint's own after-training pass@1 on exactly these eval sets, problems and
    decoding (its ``metrics.json``), or None when any set differs: measuring the same weights on the
    same problems the same way again would give the same numbers."""
    found = (parent_metrics or {}).get("eval")
    if not isinstance(found, dict):
        return None
    out = {}
    for source, problems in eval_sets.items():
        m = found.get(source)
        if not isinstance(m, dict) or m.get("identity") != eval_identity(problems, args):
            return None
        out[source] = {**m, "reused_from_parent": True}
    return out


def evaluate_policy(policy: Policy, eval_sets: dict[str, list[dict]], args: Any, *,
                    label: str = "policy") -> tuple[dict[str, dict], list[dict]]:
    """Greedy PoT pass@1 on each eval set (``args.eval_max_new_tokens``, ``args.eval_batch_size``):
    ``{source: metrics}`` and the details of every set (each row names its ``eval_set``)."""
    out: dict[str, dict] = {}
    details: list[dict] = []
    for source, problems in eval_sets.items():
        t0 = time.perf_counter()
        metrics, rows = evaluate_pot(policy, problems, max_new_tokens=args.eval_max_new_tokens,
                                     batch_size=args.eval_batch_size)
        metrics["wall_s"] = round(time.perf_counter() - t0, 3)
        metrics["identity"] = eval_identity(problems, args)
        out[source] = metrics
        details += [{"eval_set": source, **r} for r in rows]
        log.info("%s pass@1 on %s (%d problems): %.1f%% (mean %.1f completion tokens)", label, source,
                 metrics["n"], 100 * metrics["pass@1"], metrics["mean_completion_tokens"])
    return out, details


def eval_deltas(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Per eval set: the change in pass@1 and in mean completion tokens (and their ratio)."""
    out = {}
    for source, a in after.items():
        b = before.get(source)
        if b is None:
            continue
        out[source] = {
            "pass@1": a["pass@1"] - b["pass@1"],
            "mean_completion_tokens": a["mean_completion_tokens"] - b["mean_completion_tokens"],
            "mean_completion_tokens_ratio": (a["mean_completion_tokens"] / b["mean_completion_tokens"]
                                             if b["mean_completion_tokens"] else None),
        }
    return out
