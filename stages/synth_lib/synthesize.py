"""The synth stage's library: arguments, problem loading and hygiene, teachers, sandbox
verification and the style rewrites; ``prepare`` and ``build`` for the harness. The launch module
``stages/synth.py`` documents the stage."""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewards import score_pot
from sandbox import get_sandbox
from stages.common.chat import LocalChat, OpenAIChat, ResponseCache
from stages.common.checkpoint import stage_ref
from stages.common.config import ConfigError
from stages.common.data import DataFormatError, load_problems, read_jsonl, source_files, split_source
from stages.common.modeling import load_tokenizer
from stages.common.pot import SYSTEM_PROMPT, extract_program, format_completion, program_key
from stages.common.pot_style import (
    add_explanation,
    add_step_comments,
    chosen_for_rewrite,
    inline_single_use,
    parse_style_mix,
    restyle_candidates,
)
from stages.harness import StageArguments, StageConfigs, StageContext, StagePlan, StageResult
from stages.synth_lib.gsm8k_pot import convert
from stages.synth_lib.hygiene import Decontaminator, Removed, decontaminate, dedup_problems
from stages.synth_lib.teachers import (
    ChatTeacher,
    GSM8KAnnotationTeacher,
    ReferenceTeacher,
    TeacherError,
)

log = logging.getLogger("mathforge.synth")

TEACHERS = ("reference", "gsm8k-annotations", "openai", "local")
_FALLBACK_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


@dataclass
class SynthArguments(StageArguments):
    problems: list[str] = field(default_factory=lambda: ["gsm8k:train"], metadata={
        "help": "Problem sources: arith:<split>[:n[:seed]], gsm8k:<split>[:n], or a jsonl of Problem rows."})
    max_problems: int | None = field(default=None, metadata={"help": "Use at most this many problems."})
    teachers: list[str] = field(default_factory=lambda: ["gsm8k-annotations"], metadata={
        "help": f"Teachers, tried in order on the problems still unsolved: {', '.join(TEACHERS)}."})
    tokenizer: str | None = field(default=None, metadata={
        "help": "The student model whose tokenizer counts n_tokens (tiny, a hub id, a folder, a checkpoint); "
                "the stage's parent. Unset: n_tokens counts word and punctuation pieces."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling and back-off jitter."})
    # prompting (chat teachers)
    few_shot: str | None = field(default=None, metadata={
        "help": "Few-shot examples: a jsonl with question and completion fields, or a problem source whose "
                "programs are used (arith:... reference programs, gsm8k:... converted annotations)."})
    num_few_shot: int = field(default=0, metadata={"help": "How many few-shot examples go into the prompt."})
    system_prompt: str = field(default=SYSTEM_PROMPT, metadata={"help": "The PoT system message."})
    num_samples: int = field(default=1, metadata={"help": "Samples per problem per round (chat teachers)."})
    max_attempts: int = field(default=1, metadata={
        "help": "Sampling rounds per problem and chat teacher; a round asks num_samples more for problems "
                "still short of keep_per_problem verified programs."})
    keep_per_problem: int = field(default=1, metadata={"help": "Distinct verified programs kept per problem."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (chat teachers)."})
    max_tokens: int = field(default=512, metadata={"help": "Completion budget per sample (chat teachers)."})
    # openai
    openai_model: str | None = field(default=None, metadata={"help": "Model name at the endpoint."})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible endpoint (None: OpenAI's)."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "Name of the environment variable holding the API key (the key itself is never stored)."})
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    request_timeout_s: float = field(default=60.0, metadata={"help": "Timeout of one HTTP request."})
    request_deadline_s: float = field(default=600.0, metadata={"help": "Give up on a request after this long."})
    max_retries: int = field(default=8, metadata={"help": "Retries per request (429, 5xx, timeouts, bad bodies)."})
    backoff_base_s: float = field(default=1.0, metadata={"help": "First back-off cap; doubles per retry."})
    backoff_max_s: float = field(default=60.0, metadata={"help": "Largest back-off between retries."})
    price_input_per_mtok: float = field(default=0.0, metadata={"help": "USD per million prompt tokens."})
    price_output_per_mtok: float = field(default=0.0, metadata={"help": "USD per million completion tokens."})
    # local
    local_model: str | None = field(default=None, metadata={"help": "HF model for the local teacher."})
    local_backend: str = field(default="auto", metadata={"help": "auto, transformers or vllm."})
    generation_batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch (local)."})
    # verification and output
    sandbox_timeout_s: float = field(default=5.0, metadata={"help": "Wall-clock limit of one program run."})
    concise_fraction: float = field(default=0.0, metadata={
        "help": "Share of problems (a seeded draw per problem id) whose programs are rewritten shorter by "
                "stages.common.pot_style.inline_single_use before verification: the data gets a spread of lengths "
                "for length-aware RL and concise/verbose pairs for DPO."})
    concise_mode: str = field(default="literals", metadata={
        "help": "literals: inline variables bound to a number; all: every single-use variable."})
    verbose_fraction: float = field(default=0.0, metadata={
        "help": "Share of problems (an independent seeded draw) whose programs get a comment line before every "
                "statement or an explanation after it (verbose_mode): the same computation, longer."})
    verbose_mode: str = field(default="explanation", metadata={
        "help": "explanation: a comment line after the program (pot_style.add_explanation); comments: a "
                "comment line before every statement (pot_style.add_step_comments)."})
    style_mix: dict | str | None = field(default=None, metadata={
        "help": "Teacher styles and their shares, e.g. {plain: 0.35, comments: 0.25, comments+answer_var: 0.25, "
                "comments+prints+answer_var: 0.15}: each problem's programs are rewritten in one style (a seeded draw "
                "per problem id) by stages.common.pot_style.apply_style before verification. Replaces "
                "concise_fraction and verbose_fraction (set neither with it)."})
    normalize_completions: bool = field(default=True, metadata={
        "help": "Keep only the program block of a verified completion (drop the teacher's prose)."})
    # hygiene
    dedup: bool = field(default=True, metadata={"help": "Remove exact-duplicate problems and solutions."})
    near_dup_threshold: float | None = field(default=0.9, metadata={
        "help": "Word 5-gram Jaccard at or above which two problems with the same answer are duplicates "
                "(None: off)."})
    decontaminate: list[str] = field(default_factory=lambda: ["gsm8k:test"], metadata={
        "help": "Evaluation problem sources; problems sharing a word n-gram with them are removed."})
    decontamination_ngram: int = field(default=13, metadata={"help": "n of the decontamination n-grams."})
    cache_dir: str | None = field(default=None, metadata={
        "help": "Where chat responses are cached (default <runs_dir>/<run>/synth/cache)."})


# ---------------------------------------------------------------------------------------------
# Inputs, validated before anything is written


def load_all_problems(sources: list[str], seed: int) -> list[dict]:
    problems: list[dict] = []
    where: dict[str, str] = {}
    for src in sources:
        if not src.startswith(("arith:", "gsm8k:")) and not Path(split_source(src)[0]).exists():
            raise DataFormatError(src, None, None, "does not exist (expected a jsonl file, arith:... or gsm8k:...)")
        for p in load_problems(src, seed=seed):
            if p["id"] in where:
                raise DataFormatError(src, None, "id", f"'{p['id']}' also comes from {where[p['id']]}")
            where[p["id"]] = src
            problems.append(p)
    return problems


def load_few_shot(spec: str | None, k: int, seed: int) -> list[dict]:
    """``k`` few-shot examples as ``{"id", "question", "completion"}``."""
    if not spec or k <= 0:
        return []
    path = Path(spec)
    if path.is_file():
        rows = read_jsonl(path)
        out = []
        for lineno, r in enumerate(rows[:k], start=1):
            for f in ("question", "completion"):
                if not isinstance(r.get(f), str) or not r[f].strip():
                    raise DataFormatError(path, lineno, f, "is missing or empty (a few-shot row needs question "
                                                           "and completion)")
            out.append({"id": r.get("id", f"few-shot-{lineno}"), "question": r["question"],
                        "completion": r["completion"]})
        return out
    out = []
    for p in load_problems(spec, seed=seed):
        program = p.get("program")
        if program is None and isinstance(p.get("solution"), str):
            program = convert(p["question"], p["solution"], p["answer"]).program
        if program:
            out.append({"id": p["id"], "question": p["question"], "completion": format_completion(program)})
        if len(out) == k:
            break
    if len(out) < k:
        raise DataFormatError(spec, None, None, f"gives {len(out)} few-shot examples with programs, {k} requested")
    return out


def build_teachers(args: SynthArguments, cache_dir: Path, few_shot: list[dict], *, check_only: bool = False):
    """The teachers of the recipe, in order (``check_only``: validate without creating clients)."""
    if not args.teachers:
        raise TeacherError("teachers is empty: name at least one of " + ", ".join(TEACHERS))
    out = []
    shots = [(r["question"], r["completion"]) for r in few_shot]
    for name in args.teachers:
        if name == "reference":
            out.append(ReferenceTeacher())
        elif name == "gsm8k-annotations":
            out.append(GSM8KAnnotationTeacher())
        elif name in ("openai", "local"):
            if check_only:
                if name == "openai" and not args.openai_model:
                    raise TeacherError("the openai teacher needs openai_model")
                if name == "openai" and not args.dry_run and not os.environ.get(args.api_key_env):
                    raise TeacherError(f"the openai teacher reads its API key from ${args.api_key_env}, "
                                         "which is not set")
                if name == "local" and not args.local_model:
                    raise TeacherError("the local teacher needs local_model")
                out.append(None)
                continue
            if name == "openai":
                model = OpenAIChat(args.openai_model or "", base_url=args.base_url, api_key_env=args.api_key_env,
                                     concurrency=args.concurrency, request_timeout_s=args.request_timeout_s,
                                     deadline_s=args.request_deadline_s, max_retries=args.max_retries,
                                     backoff_base_s=args.backoff_base_s, backoff_max_s=args.backoff_max_s,
                                     price_input_per_mtok=args.price_input_per_mtok,
                                     price_output_per_mtok=args.price_output_per_mtok, seed=args.seed)
            else:
                spec = stage_ref(args.local_model or "", Path(args.runs_dir) / args.run)  # e.g. @sft
                model = LocalChat(spec, batch_size=args.generation_batch_size,
                                    backend=args.local_backend, seed=args.seed)
            cache = ResponseCache(cache_dir / f"{name}.jsonl")
            out.append(ChatTeacher(model, cache, few_shot=shots, system_prompt=args.system_prompt,
                                     temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed))
        else:
            raise TeacherError(f"unknown teacher '{name}': use one of {', '.join(TEACHERS)}")
    return out


def default_cache_dir(args: SynthArguments) -> Path:
    return Path(args.cache_dir) if args.cache_dir else Path(args.runs_dir) / args.run / "synth" / "cache"


# ---------------------------------------------------------------------------------------------
# The stage


def prepare(configs: StageConfigs) -> StagePlan:
    """Check the recipe, read the problems, the few-shot examples and the eval sets, and check the
    teachers (API key, models) before anything is written."""
    args = configs.args
    for name in ("concise_fraction", "verbose_fraction"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {getattr(args, name)}")
    if args.verbose_mode not in ("explanation", "comments"):
        raise ConfigError(f"verbose_mode must be explanation or comments, got {args.verbose_mode!r}")
    if args.concise_mode not in ("literals", "all"):
        raise ConfigError(f"concise_mode must be literals or all, got {args.concise_mode!r}")
    if args.style_mix:
        if args.concise_fraction > 0 or args.verbose_fraction > 0:
            raise ConfigError("style_mix replaces concise_fraction and verbose_fraction: set only one of them")
        try:
            args.style_mix = dict(parse_style_mix(args.style_mix))
        except ValueError as e:
            raise ConfigError(f"style_mix: {e}") from e
    problems = load_all_problems(args.problems, args.seed)
    if args.max_problems:
        problems = problems[: args.max_problems]
    few_shot = load_few_shot(args.few_shot, args.num_few_shot, args.seed)
    eval_sets = {src: [p["question"] for p in load_problems(src, seed=args.seed)] for src in args.decontaminate}
    cache_dir = default_cache_dir(args)
    build_teachers(args, cache_dir, few_shot, check_only=True)
    inputs = [f for src in args.problems + args.decontaminate for f in source_files(src)]
    if args.few_shot and Path(args.few_shot).is_file():
        inputs.append(args.few_shot)
    decon = Decontaminator(eval_sets, n=args.decontamination_ngram) if eval_sets else None
    data = {"problems": problems, "few_shot": few_shot, "decon": decon, "cache_dir": cache_dir}
    details = plan_details(args, problems, few_shot, decon, cache_dir) if args.dry_run else {}
    return StagePlan(parent=args.tokenizer, inputs=list(dict.fromkeys(inputs)), details=details, data=data,
                     seed=args.seed)


def build(ctx: StageContext, plan: StagePlan) -> StageResult:
    if not ctx.is_main:  # the data is built on the main process; other ranks wait for it
        return StageResult({})
    data = plan.data
    return StageResult(synthesize(ctx, ctx.args, data["problems"], data["few_shot"], data["decon"], data["cache_dir"]))


def plan_details(args: SynthArguments, problems: list[dict], few_shot: list[dict], decon, cache_dir: Path) -> dict:
    """What a run would do: problems after hygiene, teachers, and chat requests not yet cached."""
    kept, removed = _hygiene(args, problems, few_shot, decon)
    details: dict[str, Any] = {"problems": len(problems), "after_hygiene": len(kept),
                               "removed": dict(Counter(r.reason.split(" of ")[0].split(":")[0] for r in removed)),
                               "teachers": args.teachers, "cache_dir": str(cache_dir),
                               "outputs": ["verified.jsonl", "rejected.jsonl", "removed.jsonl", "metrics.json",
                                           "manifest.json"]}
    shots = [(r["question"], r["completion"]) for r in few_shot]
    for name in args.teachers:
        if name not in ("openai", "local"):
            continue
        cache = ResponseCache(cache_dir / f"{name}.jsonl")
        model_name = f"openai:{args.openai_model}" if name == "openai" else f"local:{args.local_model}"
        probe = ChatTeacher(_NamedOnly(model_name), cache, few_shot=shots, system_prompt=args.system_prompt,
                              temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
        first_round = list(range(args.num_samples))
        details[f"{name}_samples_first_round"] = {"cached": len(kept) * len(first_round) - probe.pending(kept, first_round),
                                                  "to_request": probe.pending(kept, first_round),
                                                  "at_most": len(kept) * args.num_samples * args.max_attempts}
        if name == "openai":
            details["api_key_set"] = bool(os.environ.get(args.api_key_env))
    return details


@dataclass
class _NamedOnly:
    """A model that only has a name: the dry run asks the cache, never the model."""

    name: str
    usage: Any = None

    def complete(self, requests, on_response=None):  # pragma: no cover - never called
        raise RuntimeError("the dry run makes no request")


def _hygiene(args: SynthArguments, problems: list[dict], few_shot: list[dict], decon):
    # Few-shot problems are answered in the prompt itself: a chat teacher must not be asked them.
    chat = any(t in ("openai", "local") for t in args.teachers)
    shot_ids = {r["id"] for r in few_shot} if chat else set()
    removed = [Removed(p, "few-shot example") for p in problems if p["id"] in shot_ids]
    kept = [p for p in problems if p["id"] not in shot_ids]
    if args.dedup:
        kept, dups = dedup_problems(kept, near_threshold=args.near_dup_threshold)
        removed += dups
    kept, dirty = decontaminate(kept, decon)
    return kept, removed + dirty


def _reason(score) -> str:
    if score.status == "no_code":
        return "no_code"
    if score.status == "ok":
        return "unparseable_gold" if score.correct is None else "wrong_answer"
    if score.status == "timeout":
        return "timeout"
    return f"{score.status}:{score.error_type}" if score.error_type else score.status


def synthesize(ctx: StageContext, args: SynthArguments, problems: list[dict], few_shot: list[dict], decon,
               cache_dir: Path) -> dict:
    t0 = time.perf_counter()
    kept, removed = _hygiene(args, problems, few_shot, decon)
    log.info("%d problems, %d after hygiene (%d removed)", len(problems), len(kept), len(removed))
    teachers = build_teachers(args, cache_dir, few_shot)
    count_tokens = _token_counter(ctx)
    sandbox = get_sandbox(timeout_s=args.sandbox_timeout_s)
    by_id = {p["id"]: p for p in kept}
    verified: dict[str, list[dict]] = {p["id"]: [] for p in kept}
    keys: dict[str, set[str]] = {p["id"]: set() for p in kept}
    rejected: list[dict] = []
    per_teacher: dict[str, dict] = {}
    verify_s = 0.0
    for teacher in teachers:
        stats: dict[str, Any] = {"problems": 0, "candidates": 0, "verified": 0, "solved": 0, "rounds": 0,
                                 "rejections": Counter()}
        asked: set[str] = set()
        rounds = 1 if teacher.deterministic else args.max_attempts
        n = 1 if teacher.deterministic else args.num_samples
        for rnd in range(rounds):
            todo = [p for p in kept if len(verified[p["id"]]) < args.keep_per_problem]
            if not todo:
                break
            stats["rounds"] += 1
            asked.update(p["id"] for p in todo)
            candidates = list(teacher.propose(todo, list(range(rnd * n, (rnd + 1) * n))))
            if args.concise_fraction > 0 or args.verbose_fraction > 0 or args.style_mix:
                for style, count in _rewrite_style(candidates, args).items():
                    stats[f"rewritten_{style}"] = stats.get(f"rewritten_{style}", 0) + count
            stats["candidates"] += len(candidates)
            runnable = [c for c in candidates if c.completion is not None]
            t1 = time.perf_counter()
            scores = score_pot([c.completion for c in runnable], [by_id[c.problem_id]["answer"] for c in runnable],
                               sandbox) if runnable else []
            verify_s += time.perf_counter() - t1
            score_of = {id(c): s for c, s in zip(runnable, scores, strict=True)}
            for c in candidates:
                p = by_id[c.problem_id]
                s = score_of.get(id(c))
                detail = None
                if s is None:
                    reason = c.error or "no completion"
                    if reason.startswith("teacher_error"):  # one key in the counts; the message per row
                        reason, detail = "teacher_error", reason.partition(": ")[2]
                elif not s.correct:
                    reason = _reason(s)
                else:
                    key = program_key(s.program or "")
                    if args.dedup and key in keys[p["id"]]:
                        reason = "duplicate solution"
                    elif len(verified[p["id"]]) >= args.keep_per_problem:
                        reason = "enough solutions"
                    else:
                        keys[p["id"]].add(key)
                        completion = format_completion(s.program) if args.normalize_completions and s.program \
                            else c.completion
                        verified[p["id"]].append({
                            "id": p["id"], "question": p["question"], "answer": p["answer"],
                            "completion": completion, "executed_answer": s.answer, "correct": True,
                            "source": c.source, "n_tokens": count_tokens(completion), "sample": c.sample})
                        stats["verified"] += 1
                        continue
                stats["rejections"][reason] += 1
                rejected.append({"id": p["id"], "question": p["question"], "answer": p["answer"],
                                 "completion": c.completion, "source": c.source, "sample": c.sample,
                                 "reason": reason, "detail": detail, "executed_answer": s.answer if s else None,
                                 "program": extract_program(c.completion) if c.completion else None})
        stats["problems"] = len(asked)
        stats["solved"] = sum(1 for pid in asked if any(r["source"] == teacher.name for r in verified[pid]))
        stats["yield"] = stats["solved"] / stats["problems"] if stats["problems"] else 0.0
        stats["rejections"] = dict(stats["rejections"].most_common())
        stats.update(teacher.metrics())
        per_teacher[teacher.name] = stats
        log.info("teacher %s: %d/%d problems solved (%.1f%%)", teacher.name, stats["solved"], stats["problems"],
                 100 * stats["yield"])
    rows = [r for p in kept for r in verified[p["id"]]]
    solved = sum(1 for p in kept if verified[p["id"]])
    ctx.write_jsonl("verified.jsonl", rows)
    ctx.write_jsonl("rejected.jsonl", rejected)
    ctx.write_jsonl("removed.jsonl", [{"id": r.problem["id"], "question": r.problem["question"], "reason": r.reason}
                                      for r in removed])
    metrics = _metrics(args, problems, kept, removed, rows, solved, rejected, per_teacher, teachers, cache_dir,
                       count_tokens, time.perf_counter() - t0, verify_s)
    log.info("synth: %d verified programs for %d/%d problems (%.1f%%)", len(rows), solved, len(kept),
             100 * metrics["yield"])
    return metrics


def _rewrite_style(candidates: list, args: SynthArguments) -> dict[str, int]:
    """Rewrite the candidates of the problems drawn for a teacher style (``style_mix``), or for the
    concise or the verbose style (in place, before verification); the counts. A problem drawn for
    both concise and verbose gets the concise style."""
    if args.style_mix:
        return restyle_candidates(candidates, args.style_mix, args.seed)
    done = {style: 0 for style, share in (("concise", args.concise_fraction), ("verbose", args.verbose_fraction))
            if share > 0}
    for c in candidates:
        if c.completion is None:
            continue
        if chosen_for_rewrite(c.problem_id, args.concise_fraction, args.seed):
            style = "concise"
        elif chosen_for_rewrite(c.problem_id, args.verbose_fraction, args.seed + 7919):
            style = "verbose"
        else:
            continue
        program = extract_program(c.completion)
        if not program:
            continue
        if style == "concise":
            new = inline_single_use(program, literals_only=args.concise_mode == "literals")
        elif args.verbose_mode == "comments":
            new = add_step_comments(program)
        else:
            new = add_explanation(program, c.problem_id)
        if new is not None:
            c.completion = format_completion(new)
            done[style] += 1
    return done


def _metrics(args, problems, kept, removed, rows, solved, rejected, per_teacher, teachers, cache_dir,
             count_tokens, wall_s, verify_s) -> dict:
    removed_by: Counter = Counter()
    for r in removed:
        removed_by["contaminated" if r.reason.startswith("contaminated") else
                   "near_duplicate" if r.reason.startswith("near") else
                   "duplicate" if r.reason.startswith("duplicate") else "few_shot"] += 1
    contaminated = Counter(r.reason.split(": ", 1)[1].split(" (")[0] for r in removed
                           if r.reason.startswith("contaminated"))
    usage = [t.model.usage for t in teachers if hasattr(t, "model")]
    return {
        "problems": {"loaded": len(problems), "after_hygiene": len(kept), "removed": dict(removed_by),
                     "contaminated_by_eval_set": dict(contaminated)},
        "verified_rows": len(rows),
        "problems_solved": solved,
        "problems_unsolved": len(kept) - solved,
        "yield": solved / len(kept) if kept else 0.0,
        "rejected_candidates": len(rejected),
        "rejections": dict(Counter(r["reason"] for r in rejected).most_common()),
        "teachers": per_teacher,
        "tokens": {"prompt": sum(u.prompt_tokens for u in usage),
                   "completion": sum(u.completion_tokens for u in usage),
                   "cost_usd": round(sum(u.cost_usd for u in usage), 6),
                   "verified_completion_tokens": sum(r["n_tokens"] for r in rows),
                   "n_tokens_counted_with": count_tokens.source},
        "cache_dir": str(cache_dir.resolve()),
        "wall_s": round(wall_s, 3),
        "verify_s": round(verify_s, 3),
    }


class _TokenCounter:
    def __init__(self, tokenizer=None, source: str = "fallback: word and punctuation pieces"):
        self.tokenizer, self.source = tokenizer, source

    def __call__(self, text: str) -> int:
        if self.tokenizer is None:
            return len(_FALLBACK_TOKEN_RE.findall(text))
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def _token_counter(ctx: StageContext) -> _TokenCounter:
    if ctx.parent is None:
        return _TokenCounter()
    return _TokenCounter(load_tokenizer(ctx.parent.path), f"tokenizer of {ctx.parent.path}")
