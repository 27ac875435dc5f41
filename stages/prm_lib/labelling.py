"""PRM labelling and evaluation: choose policy solutions by mistake mining, label their steps
(Math-Shepherd MC rollouts, an LLM judge, perturbed pairs, or imported files), and measure a PRM
(step metrics, first-error F1, best-of-N)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewards import score_pot
from stages.common.chat import (
    AnthropicChat,
    ChatConfigError,
    ChatRequest,
    LocalChat,
    OpenAIChat,
    complete_cached,
)
from stages.common.checkpoint import stage_ref
from stages.common.data import DataFormatError, read_jsonl
from stages.common.pot import build_messages
from stages.common.steps import split_solution
from stages.prm_lib import labels
from stages.prm_lib.metrics import best_of_n, class_metrics, first_error_metrics, step_metrics
from stages.prm_lib.model import CLASS_NAMES, EncodingConfig, class_index

log = logging.getLogger("mathforge.prm")


def with_domains(samples: list[dict], problems: Sequence[dict]) -> list[dict]:
    """Samples (``stages.harness.policy.sample_solutions`` rows) with their problem's reweighting
    domain, and without those whose gold could not be read (``correct`` None): no label can be
    trusted there."""
    domain = {p["id"]: domain_of(p) for p in problems}
    return [{**s, "domain": domain[s["id"]]} for s in samples if s["correct"] is not None]


def domain_of(problem: dict) -> str:
    """The reweighting domain of a problem: its ``domain`` field, the arithmetic task's level, or its source."""
    if "domain" in problem:
        return str(problem["domain"])
    if "level" in problem:
        return f"level{problem['level']}"
    return str(problem["id"]).split("-")[0]


def mined_solutions(samples: list[dict], *, low: float, high: float, limit: int | None, mode: str = "filter",
                    max_problems: int | None = None,
                    max_correct_per_wrong: float | None = None) -> tuple[list[dict], dict]:
    """Distinct solutions with steps, of the problems that mistake mining keeps (``mode`` filter:
    fail rate in [``low``, ``high``]; order; none; at most ``max_problems`` of them), in mining
    order, at most ``limit``.

    ``max_correct_per_wrong``: keep at most this many correct solutions per wrong one (in mining
    order). A policy that is right 90% of the time otherwise fills the budget with solutions
    whose every step is positive, and the classifier sees too few errors to learn them."""
    fail = labels.fail_rates([s["id"] for s in samples], [s["correct"] for s in samples])
    order = labels.mine_mistakes(fail, low, high, mode=mode, limit=max_problems)
    by_id: dict[str, list[dict]] = {}
    for s in samples:
        by_id.setdefault(s["id"], []).append(s)
    ranked: list[dict] = []
    for pid in order:
        seen = set()
        for s in by_id[pid]:
            if s["completion"] in seen or not split_solution(s["completion"]):
                continue
            seen.add(s["completion"])
            ranked.append(s)
    limit = len(ranked) if limit is None else limit
    if max_correct_per_wrong is not None:
        wrong = [s for s in ranked if not s["correct"]]
        right = [s for s in ranked if s["correct"]]
        n_wrong = min(len(wrong), limit)
        n_right = min(len(right), int(max_correct_per_wrong * n_wrong))
        if n_wrong + n_right > limit:
            n_wrong = min(len(wrong), math.ceil(limit / (1 + max_correct_per_wrong)))
            n_right = min(len(right), limit - n_wrong)
        keep = {id(s) for s in wrong[:n_wrong]} | {id(s) for s in right[:n_right]}
        ranked = [s for s in ranked if id(s) in keep]
    chosen = ranked[:limit]
    in_range = sum(low <= r <= high for r in fail.values())
    return chosen, {"mining": mode, "fail_rate_range": [low, high], "problems": len(fail),
                    "problems_in_mining_range": in_range, "problems_kept": len(order),
                    "mean_fail_rate": sum(fail.values()) / len(fail) if fail else 0.0,
                    "samples": len(samples), "wrong_samples": sum(not s["correct"] for s in samples)}


def mc_rows(policy: Any, solutions: Sequence[dict], args: Any, seed: int) -> list[dict]:
    items = [labels.MCItem(s["question"], s["answer"], split_solution(s["completion"]), s["correct"]) for s in solutions]
    rollout = labels.policy_rollout(policy.model, policy.tokenizer, max_new_tokens=args.gen_max_new_tokens,
                               temperature=args.rollout_temperature, batch_size=args.gen_batch_size, seed=seed)
    rows = labels.mc_labels(rollout, items, k=args.mc_rollouts, skip_correct=args.mc_skip_correct)
    for r, s in zip(rows, solutions, strict=True):
        r["id"], r["solution_correct"], r["domain"] = s["id"], s["correct"], s.get("domain", "default")
    return rows


def perturbed_rows(samples: Sequence[dict], limit: int, seed: int, exclude: Sequence[dict] = ()) -> list[dict]:
    """Up to ``limit`` pairs from distinct correct samples: the solution itself (every step right)
    and a copy with one step made wrong (``labels.perturb_solution``) that the sandbox shows to
    give a different answer (that step and the rest wrong). MC rollouts find few errors when the
    policy is usually right; a pair shows the classifier one error next to the same solution
    without it, at no rollout cost. ``exclude``: solutions already labelled otherwise."""
    rng = random.Random(seed)
    taken = {(s["id"], s["completion"]) for s in exclude}
    pool, seen = [], set()
    for s in samples:
        key = (s["id"], s["completion"])
        if s["correct"] and key not in taken and key not in seen:
            seen.add(key)
            pool.append(s)
    rng.shuffle(pool)
    made = []
    for s in pool:
        if len(made) >= 2 * limit:  # some perturbations keep the answer; draw spares
            break
        steps = split_solution(s["completion"])
        changed = labels.perturb_solution(steps, rng) if steps else None
        if changed is not None:
            made.append((s, steps, *changed))
    texts = [labels.prefix_completion(bad) + "```" for _, _, bad, _ in made]
    scores = score_pot(texts, [s["answer"] for s, *_ in made]) if made else []
    rows: list[dict] = []
    for (s, steps, bad, first), score in zip(made, scores, strict=True):
        if score.correct or len(rows) >= 2 * limit:
            continue
        common = {"prompt": s["question"], "id": s["id"], "domain": s.get("domain", "default"), "perturbed": True}
        rows.append({**common, "completions": list(steps), "labels": [True] * len(steps),
                     "soft_labels": [1.0] * len(steps), "solution_correct": True})
        rows.append({**common, "completions": bad, "labels": [j < first for j in range(len(bad))],
                     "soft_labels": [1.0 if j < first else 0.0 for j in range(len(bad))], "solution_correct": False})
    return rows


def judge_model(args: Any, run_dir: Path):
    """The judge's chat client (``stages.common.chat``, shared with the synth stage's teachers)."""
    if args.judge in ("openai", "anthropic"):
        if not args.judge_model:
            raise ChatConfigError(f"the {args.judge} judge needs judge_model")
        if args.judge == "anthropic":  # Claude, generate-and-score's judge
            return AnthropicChat(args.judge_model, base_url=args.judge_base_url,
                                 api_key_env=args.judge_api_key_env or "ANTHROPIC_API_KEY", seed=args.seed_judge)
        return OpenAIChat(args.judge_model, base_url=args.judge_base_url,
                          api_key_env=args.judge_api_key_env or "OPENAI_API_KEY", seed=args.seed_judge)
    spec = args.judge_model or ""
    if not spec:
        raise ChatConfigError("the local judge needs judge_model (a folder, checkpoint, hub id or @<stage>)")
    return LocalChat(stage_ref(spec, run_dir), batch_size=args.gen_batch_size, seed=args.seed_judge)


def judge_rows(chat, cache, solutions: Sequence[dict], transform: str) -> tuple[list[dict], int]:
    """Stepwise rows from the judge's verdicts (transformed by HE or SE); returns (rows, failed)."""
    # keyed by the solution's text, not its position: a rerun asks the cache for the same judgements
    items = [(f"{s['id']}#{hashlib.sha256(s['completion'].encode()).hexdigest()[:16]}", s["question"],
              split_solution(s["completion"])) for s in solutions]
    verdicts = labels.judge_labels(chat, cache, items)
    rows, failed = [], 0
    for s, (_, q, steps), v in zip(solutions, items, verdicts, strict=True):
        if v is None:
            failed += 1
            continue
        if transform == "he":
            lab: list = labels.rewards_to_labels(labels.he_rewards(v, s["correct"]))
        elif transform == "se":
            lab = labels.rewards_to_labels(labels.se_rewards(v))
        else:
            lab = list(v)
        rows.append({"prompt": q, "completions": steps, "labels": lab, "id": s["id"],
                     "solution_correct": s["correct"], "domain": s.get("domain", "default")})
    return rows, failed


def teacher_solutions(chat, cache, problems: Sequence[dict], n: int, max_tokens: int) -> list[dict]:
    """The judge's own PoT solutions (the teacher generates and scores), checked in the sandbox."""
    reqs = [(f"gen:{p['id']}", ChatRequest.of(f"gen:{p['id']}", build_messages(p["question"]), n=n,
                                              temperature=0.8, max_tokens=max_tokens), list(range(n)))
            for p in problems]
    by_id = {f"gen:{p['id']}": (k, p) for k, p in enumerate(problems)}
    # in problem and sample order, whichever responses came from the cache or arrived first
    fresh = sorted((by_id[s.item_id][0], s.sample, s.text) for s in complete_cached(chat, cache, reqs) if s.text)
    got = [(problems[k], text) for k, _, text in fresh]
    scores = score_pot([t for _, t in got], [p["answer"] for p, _ in got])
    return [{"id": p["id"], "question": p["question"], "answer": p["answer"], "completion": t,
             "executed_answer": sc.answer, "correct": bool(sc.correct)} for (p, t), sc in zip(got, scores, strict=True)]


def imported_rows(files: Sequence[str], fmt: str, *, prm800k_mode: str, label_map: dict | None) -> list[dict]:
    if fmt not in labels.IMPORTERS and fmt != "stepwise":
        raise ValueError(f"import_format must be stepwise or one of {sorted(labels.IMPORTERS)}, got {fmt!r}")
    rows: list[dict] = []
    for f in files:
        if fmt == "prm800k":
            rows += labels.import_prm800k(f, prm800k_mode)
        elif fmt == "text_label":
            if not label_map:
                raise DataFormatError(f, None, "import_label_map", "text_label rows need a label map (JSON object)")
            rows += labels.import_text_label(f, label_map)
        elif fmt == "stepwise":
            rows += read_jsonl(f, "stepwise")
        else:
            rows += labels.IMPORTERS[fmt](f)
    return rows


def split_rows(rows: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out rows for step metrics, split by problem so no problem is in both parts."""
    keys = sorted({r.get("id") or r["prompt"] for r in rows})
    random.Random(seed).shuffle(keys)
    held = set(keys[: int(round(eval_fraction * len(keys)))])
    return ([r for r in rows if (r.get("id") or r["prompt"]) not in held],
            [r for r in rows if (r.get("id") or r["prompt"]) in held])


def step_correct(label: Any, threshold: float) -> bool:
    if isinstance(label, str):
        return label != CLASS_NAMES[0]
    return float(label) >= threshold


def evaluate_steps(scorer, rows: Sequence[dict], threshold: float) -> dict:
    """Step metrics (correct vs wrong, from each step's P(correct)), per-class metrics of the
    model's own classes with the confusion matrix (three classes: negative / neutral /
    positive), and ProcessBench first-error F1."""
    class_probs = scorer.class_probabilities([r["prompt"] for r in rows], [list(r["completions"]) for r in rows])
    probs = [[scorer.step_score(p) for p in sol] for sol in class_probs]
    gold = [[step_correct(x, threshold) for x in r["labels"]] for r in rows]
    flat_gold = [g for gs in gold for g in gs]
    flat_p = [p for ps in probs for p in ps]
    mode = scorer.config.label_mode
    gold_class = [class_index(x, mode, hard_threshold=threshold) for r in rows for x in r["labels"]]
    pred_class = [max(range(len(p)), key=p.__getitem__) for sol in class_probs for p in sol]
    return {"steps": step_metrics(flat_gold, flat_p), "classes": class_metrics(gold_class, pred_class,
                                                                               scorer.config.class_names),
            "first_error": first_error_metrics(gold, probs)}


def evaluate_best_of_n(scorer, samples: Sequence[dict], n: int, seed: int) -> tuple[dict, list[dict]]:
    scores = scorer.score([s["question"] for s in samples], [s["completion"] for s in samples])
    groups: dict[str, list[dict]] = {}
    details = []
    for s, sc in zip(samples, scores, strict=True):
        groups.setdefault(s["id"], []).append({"scores": sc, "correct": s["correct"], "answer": s["executed_answer"]})
        details.append({**s, "step_scores": sc})
    return best_of_n([g for g in groups.values() if len(g) == n], seed=seed), details


def timed(label: str, timings: dict):
    """Context manager that records wall seconds of a phase into ``timings``."""
    class _T:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            timings[label] = round(time.perf_counter() - self.t, 2)
            log.info("%s took %.1fs", label, timings[label])

    return _T()


def parse_label_map(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        m = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"import_label_map is not a JSON object: {e}") from e
    if not isinstance(m, dict):
        raise ValueError("import_label_map must be a JSON object")
    return {str(k): v for k, v in m.items()}


def encoding_config(args: Any) -> EncodingConfig:
    return EncodingConfig(label_mode=args.label_mode, step_separator=args.step_separator,
                          chat_template=args.chat_template, max_length=args.max_length,
                          prm_type=args.prm_type, implicit_beta=args.implicit_beta)
