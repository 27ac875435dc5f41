"""The revise stage: the policy repairs wrong solutions with the verify-then-revise loop
(:mod:`stages.revise_lib.repair`), the repairs are judged by the gold, and the policy is fine-tuned
(the shared supervised code) on the repaired solutions and on revision demonstrations (the
feedback prompt -> the corrected program), so that it learns to revise.

- :class:`ReviseArguments`: where the solutions come from, the loop's options, the PRM;
- :func:`revise_stage`: the :class:`~stages.harness.Stage` (the harness runs the lifecycle: parent
  policy, pass@1 before/after per eval set, versioned and resumable checkpoint); the PRM scorer
  class comes from the launch module (per-stage libraries do not import each other).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from trl import ModelConfig, SFTConfig

from rewards import score_pot
from stages.common.checkpoint import CheckpointError, resolve_parent, stage_ref
from stages.common.config import ConfigError, list_option
from stages.common.data import DataFormatError, load_gold_problems, load_problems
from stages.common.pot import extract_program, program_key
from stages.harness import Stage, StageConfigs, StageContext, StagePlan, StageResult
from stages.harness.arguments import SupervisedTrainingArguments
from stages.harness.journal import Journal
from stages.harness.policy import check_golds, input_files, sample_solutions
from stages.harness.supervised import train_supervised
from stages.revise_lib.data import dedupe, pair_row, read_solutions, solution_file, verified_row
from stages.revise_lib.repair import (
    PROMPTS,
    RepairOptions,
    demonstration,
    repair,
    revised_versions,
    token_counts,
)

log = logging.getLogger("mathforge.revise")

SELECT = ("wrong", "wrong_or_flagged")
TRAIN_ON = ("repaired", "demonstrations", "replay")


@dataclass
class ReviseArguments(SupervisedTrainingArguments):
    """Arguments of the revise stage besides ``SFTConfig`` (its fine-tuning) and ``ModelConfig``."""

    train_data: list[str] = field(default_factory=list, metadata={
        "help": "Problem sources with gold answers (arith:..., gsm8k:..., a Problem jsonl): the policy samples "
                "solutions to them here, and the wrong ones are revised ('none': no problems)."})
    solutions: list[str] = field(default_factory=list, metadata={
        "help": "Solutions to revise: jsonl files (question, answer, completion, optional id) or checkpoints with "
                "discarded.jsonl ('@evolve': its wrong, low-PRM and program-less samples); 'none': no solutions."})
    solutions_required: bool = field(default=True, metadata={
        "help": "With false, a '@<stage>' in solutions whose checkpoint does not exist yet is left out with a "
                "warning (the tiny recipe: the run may have no evolve stage)."})
    samples_per_problem: int = field(default=1, metadata={"help": "Solutions sampled per train_data problem."})
    sample_temperature: float = field(default=0.0, metadata={"help": "Their temperature (0: greedy)."})
    sample_max_new_tokens: int = field(default=160, metadata={"help": "Their generation budget."})
    select: str = field(default="wrong", metadata={
        "help": "What is revised: wrong (solutions wrong by the gold, each revised at least once) or "
                "wrong_or_flagged (also correct ones the verifier flags: they show what revision breaks)."})
    max_items: int | None = field(default=None, metadata={"help": "Revise at most this many solutions."})
    prm_checkpoint: str | None = field(default="@prm", metadata={
        "help": "PRM checkpoint of the verifier ('@prm': this run's); none: the sandbox signal alone."})
    prm_required: bool = field(default=False, metadata={
        "help": "With false, a '@prm' that does not exist yet leaves the verifier to the sandbox, with a warning."})
    rounds: int = field(default=3, metadata={"help": "Revision rounds at most."})
    threshold: float | None = field(default=0.5, metadata={
        "help": "A step the PRM scores under this is flagged (null: the PRM only ranks versions)."})
    aggregation: str = field(default="min", metadata={"help": "A version's PRM score: min, product, last, mean."})
    grounding: bool = field(default=False, metadata={
        "help": "The verifier also flags a program that leaves a number of the problem unused or writes one the "
                "problem does not give (stages/revise_lib/grounding.py: for quantity word problems)."})
    revise_prompt: str = field(default="prefill", metadata={
        "help": "The loop's prompt: feedback (numbered steps, the flagged step and why) or prefill (the plain PoT "
                "prompt); the kept steps are prefilled in the assistant turn either way."})
    demo_prompt: str = field(default="feedback", metadata={
        "help": "The prompt of the revision demonstrations the policy is fine-tuned on (feedback: it learns to "
                "read the feedback; prefill: they are the repaired rows)."})
    max_growth: float = field(default=0.5, metadata={
        "help": "A revised program may have at most (1 + max_growth) x the original's tokens (+ growth_slack)."})
    growth_slack: int = 16
    revise_max_new_tokens: int = field(default=160, metadata={"help": "Generation budget of a revision."})
    revise_temperature: float = field(default=0.0, metadata={"help": "Temperature of revisions (0: greedy)."})
    candidates: int = field(default=1, metadata={"help": "Revisions sampled per round; the verifier keeps the best."})
    final: str = field(default="best", metadata={"help": "best (the best-verified version) or last."})
    gold_stop: bool = field(default=True, metadata={
        "help": "Let the gold answer decide when a solution is repaired: a version the gold accepts ends the "
                "loop, one the verifier passes but the gold rejects is revised again (from its lowest-scored "
                "step). The policy never sees the gold; eval's --repair never uses it. false: the verifier "
                "decides, as at eval time (a verifier's false pass then ends the loop on a wrong answer)."})
    generation_batch_size: int = field(default=100, metadata={"help": "Generation batch size (sampling, revising)."})
    chunk_size: int = field(default=200, metadata={
        "help": "Items per journalled chunk: a rerun after a kill redoes only the unfinished chunks."})
    train_on: list[str] = field(default_factory=lambda: ["repaired", "demonstrations"], metadata={
        "help": "Fine-tuning rows: repaired (question -> repaired program), demonstrations (revision request -> "
                "corrected program), replay (the policy's own correct samples, replay_ratio x the others)."})
    replay_ratio: float = field(default=0.5, metadata={"help": "Replay rows per repaired or demonstration row."})
    eval_max_new_tokens: int = field(default=160, metadata={"help": "Generation budget of the pass@1 eval."})
    eval_batch_size: int = field(default=100, metadata={"help": "Generation batch size of the pass@1 eval."})

    def repair_options(self, seed: int) -> RepairOptions:
        return RepairOptions(rounds=self.rounds, threshold=self.threshold, aggregation=self.aggregation,
                             prompt=self.revise_prompt, max_growth=self.max_growth, growth_slack=self.growth_slack,
                             max_new_tokens=self.revise_max_new_tokens, temperature=self.revise_temperature,
                             candidates=self.candidates, batch_size=self.generation_batch_size, seed=seed,
                             final=self.final, grounding=self.grounding)


# ---------------------------------------------------------------------------------------------
# prepare


def resolve_prm(args: ReviseArguments, run_dir: Path, scorer_factory: Any) -> str | None:
    """The PRM checkpoint path, or None (the sandbox signal alone): ``none``, or an optional
    ``@prm`` that does not exist yet. A path that is not a PRM checkpoint is an error."""
    spec = args.prm_checkpoint
    if spec in (None, "") or str(spec).lower() == "none":
        return None
    try:
        parent = resolve_parent(stage_ref(str(spec), run_dir))
    except CheckpointError as e:
        if str(spec).startswith("@") and not args.prm_required:
            log.warning("prm_checkpoint %s does not exist yet (%s): the verifier is the sandbox alone", spec, e)
            return None
        raise ConfigError(f"prm_checkpoint '{spec}': {e}") from e
    if scorer_factory is None:
        raise ConfigError("prm_checkpoint: this stage was built without a PRM scorer")
    try:
        scorer_factory.check(parent.path)
    except CheckpointError as e:
        raise ConfigError(f"prm_checkpoint '{spec}': {e}") from e
    return parent.path


def solution_sources(args: ReviseArguments, run_dir: Path) -> tuple[list[str], list[str]]:
    """The solution sources to read and the optional ``@<stage>`` ones left out (not built yet)."""
    keep, missing = [], []
    for spec in args.solutions:
        path = stage_ref(spec, run_dir)
        if spec.startswith("@") and not args.solutions_required and not Path(path).is_dir():
            log.warning("solutions: %s does not exist yet in this run; left out", spec)
            missing.append(spec)
            continue
        keep.append(path)
    return keep, missing


def prepare(configs: StageConfigs, *, scorer_factory: Any = None) -> StagePlan:
    """Everything read and checked before anything is written: the loop's options, the PRM
    checkpoint, the problems and the solutions (every row validated), no overlap with the eval sets."""
    args, cfg, model_args = configs.args, configs.training, configs.model
    options = args.repair_options(cfg.seed)
    try:
        options.check()
    except ValueError as e:
        raise ConfigError(f"revise: {e}") from e
    if args.demo_prompt not in PROMPTS:
        raise ConfigError(f"demo_prompt must be one of {PROMPTS}, got {args.demo_prompt!r}")
    if args.select not in SELECT:
        raise ConfigError(f"select must be one of {SELECT}, got {args.select!r}")
    bad = [t for t in args.train_on if t not in TRAIN_ON]
    if bad or not args.train_on:
        raise ConfigError(f"train_on must be a non-empty list among {TRAIN_ON}, got {args.train_on}")
    if args.samples_per_problem < 1 or args.chunk_size < 1:
        raise ConfigError("samples_per_problem and chunk_size must be >= 1")
    prm_path = resolve_prm(args, args.run_dir, scorer_factory)
    args.train_data = list_option(args.train_data)
    args.solutions = list_option(args.solutions)
    problems: list[dict] = []
    if args.train_data:
        by_source = load_gold_problems(args.train_data, seed=cfg.seed, needed_by="revise")
        check_golds(by_source)  # an unreadable gold is warned about here; its solutions are judged None
        problems = [p for rows in by_source.values() for p in rows]
    sources, missing = solution_sources(args, args.run_dir)
    solutions: list[dict] = []
    skipped: dict[str, int] = {}
    for src in sources:
        rows, left = read_solutions(src)
        solutions += rows
        for k, v in left.items():
            skipped[k] = skipped.get(k, 0) + v
    if not problems and not solutions:
        raise DataFormatError(",".join([*args.train_data, *args.solutions]) or "train_data/solutions", None, None,
                              "holds nothing to revise: give problem sources (train_data) or solutions")
    eval_ids = {p["id"] for src in args.eval_data for p in load_problems(src, seed=cfg.seed)}
    overlap = sorted({r["id"] for r in [*problems, *solutions]} & eval_ids)
    if overlap:
        raise ConfigError(f"revise: {len(overlap)} problem(s) of train_data/solutions are in the eval sets "
                          f"{args.eval_data} (e.g. {overlap[0]}); revising them would train on the test")
    inputs = input_files(args.train_data) + [str(solution_file(s)) for s in sources]
    details = {"problems": len(problems), "samples_per_problem": args.samples_per_problem,
               "solutions": len(solutions), "solutions_skipped": skipped, "solutions_missing": missing,
               "prm_checkpoint": prm_path, "verifier": "prm+sandbox" if prm_path else "sandbox",
               "loop": vars(options), "train_on": args.train_on, "demo_prompt": args.demo_prompt}
    return StagePlan(parent=model_args.model_name_or_path, inputs=inputs, details=details,
                     data={"problems": problems, "solutions": solutions, "prm": prm_path, "skipped": skipped,
                           "missing": missing},
                     extra_config={"prm_checkpoint": prm_path, "solution_sources": sources}, seed=cfg.seed)


# ---------------------------------------------------------------------------------------------
# build


def _chunks(rows: list[dict], size: int) -> list[list[dict]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def sample_wrong(ctx: StageContext, problems: list[dict]) -> list[dict]:
    """The policy's samples of ``problems`` (journalled by problem), each judged by the gold."""
    args = ctx.args
    journal = Journal(ctx.ckpt.partial_dir / "samples.journal.jsonl")
    done, fresh = journal.rows(), []
    for k, chunk in enumerate(_chunks(problems, args.chunk_size)):
        todo = [p for p in chunk if p["id"] not in journal.done]
        if not todo:
            continue
        rows = [{**r, "source": "sampled"} for r in sample_solutions(
            ctx.policy, todo, n=args.samples_per_problem, temperature=args.sample_temperature,
            max_new_tokens=args.sample_max_new_tokens, batch_size=args.generation_batch_size, seed=ctx.seed + k)]
        fresh += rows  # every rank holds the gathered rows; the main process journals them
        if ctx.is_main:
            journal.finish_with(rows, [p["id"] for p in todo])
    return done + fresh


def select_items(args: ReviseArguments, sampled: list[dict], solutions: list[dict]) -> tuple[list[dict], dict]:
    """The items to revise, each with its original judged by the gold; and the counts of what was
    left out (right answers, unreadable golds, duplicates, the max_items cap)."""
    if solutions:
        scores = score_pot([s["completion"] for s in solutions], [s["answer"] for s in solutions])
        solutions = [{**s, "correct": sc.correct, "sample": 0} for s, sc in zip(solutions, scores, strict=True)]
    rows = [*sampled, *solutions]
    counts = Counter(total=len(rows), sampled=len(sampled), from_files=len(solutions),
                     wrong=sum(r["correct"] is False for r in rows), right=sum(r["correct"] is True for r in rows),
                     unreadable_gold=sum(r["correct"] is None for r in rows))
    chosen = [r for r in rows if r["correct"] is False or (args.select == "wrong_or_flagged" and r["correct"])]
    items = [{"key": f"{r['id']}#{r.get('source', '')}#{r.get('line', r.get('sample', 0))}", "id": r["id"], "question": r["question"],
              "answer": r["answer"], "original": r["completion"], "original_correct": r["correct"],
              "source": r.get("source", "sampled")} for r in chosen]
    items, counts["duplicates"] = dedupe(items, lambda it: (it["id"], program_key(extract_program(it["original"])
                                                                                  or it["original"])))
    if args.max_items is not None and len(items) > args.max_items:
        counts["over_max_items"] = len(items) - args.max_items
        items = items[: args.max_items]
    counts["selected"] = len(items)
    return items, dict(counts)


def revise_items(ctx: StageContext, items: list[dict], scorer: Any) -> list[dict]:
    """The loop on ``items`` in journalled chunks; every accepted revision and the final version
    judged by the gold afterwards."""
    args = ctx.args
    journal = Journal(ctx.ckpt.partial_dir / "revised.journal.jsonl", key="key")
    done, fresh = journal.rows(), []
    for k, chunk in enumerate(_chunks(items, args.chunk_size)):
        todo = [it for it in chunk if it["key"] not in journal.done]
        if not todo:
            continue
        options = args.repair_options(ctx.seed + 1000 * (k + 1))
        records = repair(ctx.policy, [{"id": it["id"], "question": it["question"], "completion": it["original"]}
                                      for it in todo], options, scorer=scorer,
                         force=[it["original_correct"] is False for it in todo],
                         golds=[it["answer"] for it in todo] if args.gold_stop else None)
        rows = judge(todo, records)
        fresh += rows
        if ctx.is_main:
            journal.append(rows)
    by_key = {r["key"]: r for r in done + fresh}
    return [by_key[it["key"]] for it in items]


def judge(items: list[dict], records: list[dict]) -> list[dict]:
    """Each item with its loop record, every accepted revision and the final judged by the gold."""
    where = [(i, j) for i, rec in enumerate(records) for j, e in enumerate(rec["rounds"]) if e["outcome"] == "accepted"]
    completions = [records[i]["rounds"][j]["revision"] for i, j in where] + [rec["final"] for rec in records]
    golds = [items[i]["answer"] for i, _ in where] + [it["answer"] for it in items]
    scores = score_pot(completions, golds) if completions else []
    for (i, j), s in zip(where, scores, strict=False):
        records[i]["rounds"][j]["correct"] = s.correct
    out = []
    for it, rec, s in zip(items, records, scores[len(where):], strict=True):
        first = next((e for e in rec["rounds"] if e.get("correct")), None)
        out.append({**it, **{k: v for k, v in rec.items() if k != "id"}, "final_correct": s.correct,
                    "final_answer": s.answer,
                    "repaired": it["original_correct"] is False and s.correct is True,
                    "repaired_round": first["round"] if first and it["original_correct"] is False else None,
                    "broken": it["original_correct"] is True and s.correct is False})
    return out


def outputs(ctx: StageContext, revised: list[dict], sampled: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """Write verified.jsonl, pairs.jsonl and train_rows.jsonl; return the fine-tuning rows."""
    args, tokenizer = ctx.args, ctx.policy.tokenizer
    verified, pairs, demos = [], [], []
    for row in revised:
        if row["original_correct"] is not False or row["repaired_round"] is None:
            continue
        versions = revised_versions(row["original"], row["rounds"])
        previous, entry = next((p, e) for p, e in versions if e["round"] == row["repaired_round"])
        completion = entry["revision"]
        chosen_tokens, rejected_tokens = token_counts(tokenizer, [completion, row["original"]])
        verified.append(verified_row(row, completion, entry["answer"], chosen_tokens, entry["round"]))
        pairs.append(pair_row(row, completion, chosen_tokens, rejected_tokens))
        demos.append({"id": row["id"], "kind": "demonstration",
                      **demonstration(row["question"], previous, entry, args.demo_prompt)})
    train: list[dict] = []
    if "repaired" in args.train_on:
        train += [{"id": v["id"], "kind": "repaired", "question": v["question"], "completion": v["completion"]}
                  for v in verified]
    if "demonstrations" in args.train_on and args.demo_prompt == "feedback":  # prefill demos are the repaired rows
        train += demos
    if "replay" in args.train_on and train:
        right = [r for r in sampled if r["correct"] is True]
        right, _ = dedupe(right, lambda r: (r["id"], r["completion"]))
        train += [{"id": r["id"], "kind": "replay", "question": r["question"], "completion": r["completion"]}
                  for r in right[: int(args.replay_ratio * len(train))]]
    if ctx.is_main:
        ctx.write_jsonl("revised.jsonl", revised)
        ctx.write_jsonl("verified.jsonl", verified)
        ctx.write_jsonl("pairs.jsonl", pairs)
        ctx.write_jsonl("train_rows.jsonl", train)
    return train, dict(Counter(r["kind"] for r in train))


def loop_metrics(revised: list[dict], rounds: int) -> dict[str, Any]:
    """What the loop did, judged by the gold: repairs of wrong solutions (by the final version and
    by any round), breaks of right ones, stop reasons and the bad revisions counted."""
    wrong = [r for r in revised if r["original_correct"] is False]
    right = [r for r in revised if r["original_correct"] is True]
    entries = [e for r in revised for e in r["rounds"]]
    repaired = sum(r["repaired"] for r in wrong)
    any_round = sum(r["repaired_round"] is not None for r in wrong)
    return {
        "items": len(revised), "wrong": len(wrong), "right": len(right),
        "attempted": sum(r["attempted"] for r in revised),
        "repaired": repaired, "repair_rate": repaired / len(wrong) if wrong else 0.0,
        "repaired_any_round": any_round, "repair_rate_any_round": any_round / len(wrong) if wrong else 0.0,
        "repaired_by_round": {str(k): sum(r["repaired_round"] is not None and r["repaired_round"] <= k for r in wrong)
                              for k in range(1, rounds + 1)},
        "broken": sum(r["broken"] for r in right), "right_attempted": sum(r["attempted"] for r in right),
        "stops": dict(Counter(r["stop"] for r in revised)),
        "revisions": len(entries),
        "outcomes": dict(Counter(e["outcome"] for e in entries)),
        "revision_status": dict(Counter(e["status"] for e in entries)),
        "syntax_errors": sum(e.get("error_type") in ("SyntaxError", "IndentationError") for e in entries),
        "timeouts": sum(e["status"] == "timeout" for e in entries),
        "flag_kinds": dict(Counter(r["flag"]["kind"] for r in revised if r["flag"])),
        "extra_tokens_per_item": sum(r["extra_tokens"] for r in revised) / len(revised) if revised else 0.0,
        "judge": dict(Counter(r.get("judge", "verifier") for r in revised)),
        # versions the verifier passed and the gold rejected: with the verifier as the judge (eval) each one
        # would have ended its loop on a wrong answer
        "verifier_false_passes": sum(r.get("verifier_false_passes", 0) for r in revised),
    }


def build(ctx: StageContext, plan: StagePlan, *, scorer_factory: Any = None) -> StageResult:
    args = ctx.args
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sampled = sample_wrong(ctx, plan.data["problems"]) if plan.data["problems"] else []
    timings["sample_s"] = time.perf_counter() - t0
    items, inputs = select_items(args, sampled, plan.data["solutions"])
    inputs.update(solutions_skipped=plan.data["skipped"], solutions_missing=plan.data["missing"])
    log.info("revise: %d solutions to revise (%s)", len(items), inputs)
    t0 = time.perf_counter()
    scorer = scorer_factory(plan.data["prm"]) if plan.data["prm"] else None
    timings["prm_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    revised = revise_items(ctx, items, scorer) if items else []
    timings["loop_s"] = time.perf_counter() - t0
    train, train_kinds = outputs(ctx, revised, sampled)
    metrics: dict[str, Any] = {"inputs": inputs, "verifier": "prm+sandbox" if scorer else "sandbox",
                               "prm_checkpoint": plan.data["prm"], "loop": loop_metrics(revised, args.rounds),
                               "train_rows_by_kind": train_kinds}
    log.info("revise: repaired %d of %d wrong solutions (%d in any round)", metrics["loop"]["repaired"],
             metrics["loop"]["wrong"], metrics["loop"]["repaired_any_round"])
    model = None
    if args.max_train_samples:
        train = train[: args.max_train_samples]
    if train:
        t0 = time.perf_counter()
        model, train_metrics = train_supervised(ctx, ctx.policy.model, ctx.policy.tokenizer, train,
                                                ctx.configs.training, ctx.configs.model)
        metrics.update(train_metrics)
        timings["train_s"] = time.perf_counter() - t0
    else:
        log.warning("revise: no solution was repaired: the policy is saved as it is (nothing to fine-tune on)")
        metrics["train"] = "skipped: no repaired solution"
    metrics["timings"] = {k: round(v, 2) for k, v in timings.items()}
    return StageResult(metrics, model)


def revise_stage(scorer_factory: Any = None) -> Stage:
    """The revise stage, verifying with PRM checkpoints through ``scorer_factory``."""
    return Stage("revise", (ReviseArguments, SFTConfig, ModelConfig),
                 prepare=partial(prepare, scorer_factory=scorer_factory),
                 build=partial(build, scorer_factory=scorer_factory))
