"""The evolve stage: PRM-guided best-of-N self-evolution with shallow tree exploration, and
rejection-sampling fine-tuning rounds.

Each round: the policy samples ``num_samples`` solutions per problem; the sandbox checks them
against the gold and the PRM scores every step; the keep filter (:mod:`stages.evolve_lib.keep`)
keeps correct solutions whose PRM score is above the threshold, deduplicated, at most ``k`` per
problem; problems that kept nothing get tree exploration (:mod:`stages.evolve_lib.tree`); the
policy is fine-tuned on what was kept (the harness's supervised training, optionally mixed with
the parent's SFT data) and the next round starts from it.

Generation is sharded by problem across ``accelerate`` processes (each problem is sampled exactly
once; results are gathered) and journaled as it finishes, so a rerun after ``kill -9`` does only
the unfinished problems; a finished round's policy is kept in the build's ``.partial`` folder so
that a rerun does not train it again.

Writes ``round_<k>/kept.jsonl`` (Verified-solution rows with ``origin``, ``prm_scores``,
``prm_score`` and ``round``), ``verified.jsonl`` (every round's kept rows: ``@evolve`` is SFT
data) and ``discarded.jsonl`` (every other sample with its ``reason``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from trl import ModelConfig, SFTConfig

from rewards.functions import AGGREGATIONS
from rewards.scoring import readable_gold
from stages.common.checkpoint import MANIFEST, CheckpointError, resolve_parent, stage_ref
from stages.common.config import ConfigError
from stages.common.data import DataFormatError, load_gold_problems, load_problems, write_json
from stages.common.modeling import TINY, load_causal_lm, save_policy
from stages.evolve_lib.keep import kept_keys
from stages.evolve_lib.metrics import round_metrics, timing_metrics
from stages.evolve_lib.sampling import SolutionScorer, Timings, TransformersSampler, VLLMSampler
from stages.evolve_lib.tree import BRANCH_AT, SELECTIONS, TreeOptions
from stages.evolve_lib.worker import SamplingOptions, Worker
from stages.harness import Stage, StageConfigs, StageContext, StagePlan, StageResult
from stages.harness.arguments import SupervisedTrainingArguments
from stages.harness.journal import Journal
from stages.harness.policy import check_golds, input_files
from stages.harness.supervised import load_solution_rows, train_supervised

log = logging.getLogger("mathforge.evolve")

SCRATCH = "evolve"  # inside the build's trainer folder (removed when the version is published)
AGGREGATION_CHOICES = ("min", "product", "last")


@dataclass
class EvolveArguments(SupervisedTrainingArguments):
    """Arguments of the evolve stage besides ``SFTConfig`` (each round's fine-tuning) and
    ``ModelConfig``."""

    train_data: list[str] = field(default_factory=lambda: ["arith:train:1000:3"], metadata={
        "help": "Problem sources with gold answers to sample (never the eval sets): arith:..., gsm8k:<split>[:n], "
                "or a jsonl of Problem rows."})
    prm_checkpoint: str = field(default="@prm", metadata={
        "help": "PRM checkpoint (either PRM type) that scores every step: a checkpoint folder or '@prm'."})
    prm_batch_size: int = field(default=64, metadata={"help": "PRM scoring batch size."})
    num_samples: int = field(default=8, metadata={"help": "N: samples per problem (best-of-N)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (> 0)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling top_p."})
    max_new_tokens: int = field(default=160, metadata={"help": "Generation budget of one sample."})
    generation_batch_size: int = field(default=16, metadata={
        "help": "Prompts per generate call (each with num_samples sequences)."})
    keep_threshold: float = field(default=0.6, metadata={
        "help": "Keep a correct solution only when its aggregated PRM score is above this."})
    prm_aggregation: str = field(default="min", metadata={"help": "Step scores -> solution score: min, product or last."})
    keep_per_problem: int = field(default=2, metadata={
        "help": "k: at most this many kept solutions per problem and round (higher PRM score first, then shorter)."})
    tree: bool = field(default=True, metadata={"help": "Tree exploration for problems whose samples kept nothing."})
    tree_branching: int = field(default=4, metadata={"help": "b: continuations sampled per expanded prefix."})
    tree_width: int = field(default=2, metadata={"help": "Prefixes expanded per problem and round of expansion."})
    tree_depth: int = field(default=2, metadata={"help": "d: maximum depth of the tree (expansions along a path)."})
    tree_token_budget: int = field(default=1024, metadata={"help": "Generated tokens per problem for the tree."})
    tree_selection: str = field(default="greedy", metadata={
        "help": "greedy (best PRM value, each prefix once) or uct (value + exploration bonus)."})
    tree_uct_c: float = field(default=1.0, metadata={"help": "UCT exploration constant."})
    tree_branch_at: str = field(default="first_below", metadata={
        "help": "Where a prefix is cut: first_below (before the first step under the threshold, else the lowest) or "
                "lowest (before the lowest-scored step)."})
    tree_stop_after: int = field(default=1, metadata={
        "help": "A problem's tree search ends once it has this many distinct passing solutions."})
    compare_best_of_n: bool = field(default=True, metadata={
        "help": "Also sample plain best-of-N with the tokens the tree used (per problem), to report the coverage "
                "tree exploration adds at equal generated tokens."})
    rounds: int = field(default=1, metadata={"help": "R: generate -> keep -> fine-tune rounds."})
    problems_per_round: int | None = field(default=None, metadata={
        "help": "Problems sampled per round (consecutive slices of train_data, wrapping); default all, every round."})
    train_on_all_rounds: bool = field(default=True, metadata={
        "help": "Round k fine-tunes on what rounds 1..k kept (false: on round k's alone)."})
    mix_data: list[str] = field(default_factory=list, metadata={
        "help": "SFT data mixed into each round's fine-tuning (e.g. '@synth', a Verified jsonl)."})
    mix_ratio: float = field(default=0.0, metadata={
        "help": "Share of each round's training rows drawn from mix_data (0 <= r < 1)."})
    chunk_problems: int = field(default=64, metadata={
        "help": "Problems per journaled chunk (what a rerun after an interruption redoes at most)."})
    use_vllm: bool = field(default=False, metadata={"help": "Generate with vLLM (a GPU, one process, the [vllm] extra)."})
    vllm_gpu_memory_utilization: float = field(default=0.5, metadata={"help": "vLLM's share of the GPU memory."})
    eval_max_new_tokens: int = field(default=160, metadata={"help": "Generation budget of the pass@1 eval."})


# ---------------------------------------------------------------------------------------------
# checks (prepare)


def check_options(args: EvolveArguments) -> TreeOptions | None:
    """Option values that cannot work, as ConfigErrors naming the field; the tree options."""
    positive = ("num_samples", "max_new_tokens", "generation_batch_size", "keep_per_problem", "rounds",
                "chunk_problems", "prm_batch_size")
    for name in positive:
        if getattr(args, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(args, name)}")
    if args.problems_per_round is not None and args.problems_per_round < 1:
        raise ConfigError(f"problems_per_round must be >= 1, got {args.problems_per_round}")
    if not args.temperature > 0:
        raise ConfigError(f"temperature must be > 0 for best-of-N sampling, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {args.top_p}")
    if not 0 <= args.keep_threshold < 1:
        raise ConfigError(f"keep_threshold must be in [0, 1) (PRM scores are probabilities), got {args.keep_threshold}")
    if args.prm_aggregation not in AGGREGATIONS:
        raise ConfigError(f"prm_aggregation must be one of {list(AGGREGATION_CHOICES)}, got {args.prm_aggregation!r}")
    if not 0 <= args.mix_ratio < 1:
        raise ConfigError(f"mix_ratio must be in [0, 1), got {args.mix_ratio}")
    if args.mix_ratio > 0 and not args.mix_data:
        raise ConfigError("mix_ratio > 0 needs mix_data (e.g. ['@synth'])")
    if args.mix_data and args.mix_ratio == 0:
        raise ConfigError("mix_data is set but mix_ratio is 0: set mix_ratio (e.g. 0.5) or remove mix_data")
    if args.tree_selection not in SELECTIONS:
        raise ConfigError(f"tree_selection must be one of {list(SELECTIONS)}, got {args.tree_selection!r}")
    if args.tree_branch_at not in BRANCH_AT:
        raise ConfigError(f"tree_branch_at must be one of {list(BRANCH_AT)}, got {args.tree_branch_at!r}")
    if not args.tree:
        return None
    try:
        return TreeOptions(branching=args.tree_branching, width=args.tree_width, depth=args.tree_depth,
                           token_budget=args.tree_token_budget, selection=args.tree_selection, uct_c=args.tree_uct_c,
                           branch_at=args.tree_branch_at, threshold=args.keep_threshold,
                           stop_after=args.tree_stop_after)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def check_vllm(args: EvolveArguments) -> None:
    if not args.use_vllm:
        return
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("use_vllm is true but vllm is not installed: install the [vllm] extra, or pass "
                          "--use_vllm false")
    import torch  # deferred: heavy
    from accelerate import PartialState  # deferred: imports torch

    if not torch.cuda.is_available():
        raise ConfigError("use_vllm is true but no GPU is visible: vLLM generation needs one (or --use_vllm false)")
    if PartialState().num_processes > 1:
        raise ConfigError("use_vllm: evolve runs vLLM in a single process; launch with --num_processes 1 or pass "
                          "--use_vllm false")
    if not 0 < args.vllm_gpu_memory_utilization < 1:
        raise ConfigError(f"vllm_gpu_memory_utilization must be in (0, 1), got {args.vllm_gpu_memory_utilization}")


def check_policy(spec: str) -> None:
    """Refuse a parent that is not a causal LM policy (a PRM checkpoint, a classifier) before any
    model loads; the error names the file and field."""
    if spec == TINY or spec.startswith("@"):
        return
    parent = resolve_parent(spec)
    if parent.kind == "hub":
        return
    folder = Path(parent.path)
    if (folder / "prm_config.json").is_file():
        raise CheckpointError(f"model_name_or_path '{spec}': {folder / 'prm_config.json'} exists: this is a PRM "
                              "checkpoint, not a policy (evolve samples from a causal LM policy)")
    config = folder / "config.json"
    if not config.is_file():
        return  # a PEFT adapter folder: its base model is checked when it loads
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"model_name_or_path '{spec}': {config} cannot be read: {e}") from e
    if architectures and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise CheckpointError(f"model_name_or_path '{spec}': {config} field 'architectures' is {architectures}: not "
                              "a causal LM (evolve needs a policy that generates)")


def resolve_prm(spec: str, run_dir: Path, scorer_factory: Any) -> tuple[str, list[str]]:
    """The PRM checkpoint folder (checked by the scorer class without loading it) and the files
    that identify it (its manifest)."""
    if not spec:
        raise ConfigError("prm_checkpoint is required (a PRM checkpoint folder or '@prm')")
    if scorer_factory is None:
        raise ConfigError("prm_checkpoint: this stage was built without a PRM scorer")
    path = stage_ref(spec, run_dir)
    try:
        parent = resolve_parent(path)
        folder = scorer_factory.check(parent.path)
    except CheckpointError as e:
        raise CheckpointError(f"prm_checkpoint '{spec}': {e}") from e
    manifest = Path(folder) / MANIFEST
    return str(folder), [str(manifest)] if manifest.is_file() else []


def load_problem_sources(sources: list[str], *, seed: int) -> tuple[list[dict], dict[str, int]]:
    """Problems with gold answers from every source (a missing gold or an empty set is an error
    naming the source, line and field). A gold that cannot be read is warned about once per
    source and its problem left out (nothing sampled for it could be judged); a repeated id keeps
    its first problem. Returns the problems and those two counts."""
    by_source = load_gold_problems(sources, seed=seed, needed_by="evolve")
    check_golds(by_source)
    problems: list[dict] = []
    seen: set[str] = set()
    counts = {"unreadable_golds": 0, "duplicate_ids": 0}
    for rows in by_source.values():
        for row in rows:
            if readable_gold(row["answer"]) is None:
                counts["unreadable_golds"] += 1
            elif row["id"] in seen:
                counts["duplicate_ids"] += 1
            else:
                seen.add(row["id"])
                problems.append(row)
    if not problems:
        raise DataFormatError(",".join(sources), None, "answer", "holds no problem with a gold answer that can be "
                                                                 "read; evolve checks every sample against it")
    return problems, counts


def check_no_eval_overlap(problems: list[dict], train_sources: list[str], eval_sources: list[str], *,
                          seed: int) -> None:
    """Refuse problems that are also in an eval set (same id or same question), naming them."""
    ids = {p["id"]: p for p in problems}
    questions = {p["question"].strip(): p for p in problems}
    for src in eval_sources:
        clash = [e["id"] for e in load_problems(src, seed=seed)
                 if e["id"] in ids or e["question"].strip() in questions]
        if clash:
            shown = ", ".join(clash[:5]) + (f" and {len(clash) - 5} more" if len(clash) > 5 else "")
            raise ConfigError(f"train_data {train_sources} and eval set '{src}' share {len(clash)} problem(s) ({shown}): "
                              "evolve must not train on the problems it is evaluated on")


def prepare(configs: StageConfigs, *, scorer_factory: Any = None) -> StagePlan:
    """Everything read and checked before anything is generated: options, the policy's kind, the
    PRM checkpoint, the problems (gold answers, no overlap with the eval sets), the mix data."""
    args, cfg, model_args = configs.args, configs.training, configs.model
    tree = check_options(args)
    check_vllm(args)
    check_policy(model_args.model_name_or_path)
    prm_path, prm_files = resolve_prm(args.prm_checkpoint, args.run_dir, scorer_factory)
    problems, left_out = load_problem_sources(args.train_data, seed=cfg.seed)
    if args.max_train_samples:
        problems = problems[: args.max_train_samples]
    check_no_eval_overlap(problems, args.train_data, args.eval_data, seed=cfg.seed)
    args.mix_data = [stage_ref(s, args.run_dir) for s in args.mix_data]
    mix_rows = load_solution_rows(args.mix_data, seed=cfg.seed) if args.mix_data else []
    details = {"problems": len(problems), "left_out": left_out, "rounds": args.rounds,
               "num_samples": args.num_samples, "keep": {"threshold": args.keep_threshold,
                                                         "aggregation": args.prm_aggregation,
                                                         "per_problem": args.keep_per_problem},
               "tree": tree.__dict__ if tree else None, "prm_checkpoint": prm_path, "mix_rows": len(mix_rows),
               "backend": "vllm" if args.use_vllm else "transformers"}
    return StagePlan(parent=model_args.model_name_or_path,
                     inputs=[*input_files(args.train_data), *input_files(args.mix_data), *prm_files],
                     details=details, data={"problems": problems, "mix_rows": mix_rows, "tree": tree,
                                            "prm_path": prm_path},
                     extra_config={"prm_checkpoint": prm_path}, seed=cfg.seed)


# ---------------------------------------------------------------------------------------------
# the build


def round_problems(problems: list[dict], per_round: int | None, k: int) -> list[dict]:
    """Round ``k``'s problems (1-based): all of them, or the k-th slice of ``per_round`` (wrapping)."""
    if not per_round or per_round >= len(problems):
        return list(problems)
    start = ((k - 1) * per_round) % len(problems)
    return [problems[(start + i) % len(problems)] for i in range(per_round)]


def mix_sample(mix_rows: list[dict], n_kept: int, ratio: float, seed: int) -> list[dict]:
    """``ratio`` of the training rows from the mix data: ``n_kept * ratio / (1 - ratio)`` rows
    (all of them when there are fewer)."""
    if not mix_rows or ratio <= 0 or n_kept == 0:
        return []
    want = round(n_kept * ratio / (1 - ratio))
    if want >= len(mix_rows):
        return list(mix_rows)
    return random.Random(seed).sample(mix_rows, want)


def training_rows(kept: list[dict]) -> list[dict]:
    return [{"id": r["id"], "question": r["question"], "completion": r["completion"]} for r in kept]


def output_row(row: dict, k: int) -> dict:
    """A kept or discarded solution as written: the Verified-solution fields first."""
    out = {name: row.get(name) for name in ("id", "question", "answer", "completion", "executed_answer", "correct")}
    out.update(source="evolve", n_tokens=row["n_tokens"], origin=row["origin"], prm_scores=row["prm_scores"],
               prm_score=row["prm_score"], round=k)
    for name in ("reason", "new_tokens", "sample", "status", "error_type", "depth", "branch_from", "level"):
        if name in row and row[name] is not None:
            out[name] = row[name]
    return out


class Rounds:
    """The rounds of one build: the journals and saved round policies in the build's scratch
    folder, and what each round wrote."""

    def __init__(self, ctx: StageContext, plan: StagePlan, scorer_factory: Any):
        self.ctx, self.plan, self.args = ctx, plan, ctx.args
        self.scratch = ctx.trainer_dir / SCRATCH
        self.model = ctx.policy.model
        self.tokenizer = ctx.policy.tokenizer
        self.device = str(next(self.model.parameters()).device)
        self.scorer_factory = scorer_factory
        self._prm = None
        self.opts = SamplingOptions(num_samples=self.args.num_samples, temperature=self.args.temperature,
                                    top_p=self.args.top_p, max_new_tokens=self.args.max_new_tokens,
                                    threshold=self.args.keep_threshold, aggregation=self.args.prm_aggregation,
                                    keep_per_problem=self.args.keep_per_problem, tree=plan.data["tree"],
                                    compare_bon=self.args.compare_best_of_n)

    @property
    def prm(self) -> Any:
        if self._prm is None:
            self._prm = self.scorer_factory(self.plan.data["prm_path"], batch_size=self.args.prm_batch_size,
                                            device=self.device)
        return self._prm

    def policy_dir(self, k: int) -> Path:
        return self.scratch / f"policy_round_{k}"

    def done_file(self, k: int) -> Path:
        return self.scratch / f"round_{k}.done.json"

    def finished_rounds(self) -> int:
        """The last round whose fine-tuned policy was saved (its generation and training are done)."""
        done = 0
        for k in range(1, self.args.rounds + 1):
            if self.done_file(k).is_file() and (self.policy_dir(k) / "config.json").is_file():
                done = k
        return done

    # -- generation -------------------------------------------------------------------------

    def sampler(self, k: int) -> Any:
        if not self.args.use_vllm:
            return TransformersSampler(self.model, self.tokenizer, batch_size=self.args.generation_batch_size)
        source = self.policy_dir(k - 1) if k > 1 else Path(self.ctx.parent.path)
        if not (source / "config.json").is_file():  # vLLM loads full weights from a folder
            source = self.scratch / "policy_for_vllm"
            if self.ctx.is_main:
                save_policy(self.model, self.tokenizer, source)
        return VLLMSampler(str(source), self.tokenizer, gpu_memory_utilization=self.args.vllm_gpu_memory_utilization,
                           dtype=self.ctx.configs.model.dtype, seed=self.ctx.seed)

    def generate(self, k: int, problems: list[dict], kept_before: dict[str, set[str]]) -> dict[str, Any]:
        """Round ``k``'s samples of every unfinished problem, chunk by chunk, journaled; returns
        the round's rows, summaries, timings and how many problems were generated now."""
        from accelerate.utils import gather_object  # deferred: imports torch
        from tqdm.auto import tqdm  # deferred: only for the progress bar

        ctx = self.ctx
        state = ctx.state
        path = self.scratch / f"round_{k}.journal.jsonl"
        if ctx.is_main:
            journal = Journal(path)  # the main process repairs a torn last line first
        state.wait_for_everyone()
        if not ctx.is_main:
            journal = Journal(path)
        size = self.args.chunk_problems
        chunks = [problems[i : i + size] for i in range(0, len(problems), size)]
        todo = [(i, c) for i, c in enumerate(chunks) if not all(p["id"] in journal.done for p in c)]
        n_todo = sum(len(c) for _, c in todo)
        log.info("evolve round %d: %d problems to generate (%d already done)", k, n_todo, len(problems) - n_todo)
        timings = Timings()
        worker = None
        sampler = None
        if todo:
            sampler = self.sampler(k)
            worker = Worker(sampler, SolutionScorer(self.prm, self.args.prm_aggregation), self.tokenizer, self.opts)
        per_rank: list[dict] = []
        bar = tqdm(total=n_todo, desc=f"evolve round {k}", disable=not ctx.is_main, leave=False)
        for index, chunk in todo:
            share = chunk[state.process_index :: state.num_processes]
            rows, summaries = worker.run(share, seed=self.ctx.seed + 100_003 * k + 1_009 * index + state.process_index,
                                         kept_before=kept_before)
            gathered = gather_object([(rows, summaries)])
            if ctx.is_main:
                journal.finish_with([r for part_rows, _ in gathered for r in part_rows]
                                    + [s for _, part_summaries in gathered for s in part_summaries],
                                    [p["id"] for p in chunk])
            bar.update(len(chunk))
        bar.close()
        if worker is not None:
            timings = worker.timings
            sampler.close()
        per_rank = gather_object([timings.to_json()])
        state.wait_for_everyone()
        journal = Journal(path)
        every = journal.rows()
        return {"rows": [r for r in every if not r.get("_summary")],
                "summaries": [r for r in every if r.get("_summary")],
                "timings": per_rank, "generated_problems": n_todo, "resumed_problems": len(problems) - n_todo}

    # -- training ---------------------------------------------------------------------------

    def train(self, k: int, rows: list[dict]) -> dict[str, Any]:
        """Fine-tune the current policy on ``rows`` (round ``k``); save it for a rerun."""
        ctx, args = self.ctx, self.args
        model, metrics = train_supervised(ctx, self.model, self.tokenizer, rows, ctx.configs.training,
                                          ctx.configs.model, subdir=f"round_{k}")
        if args.rounds > 1 and hasattr(model, "merge_and_unload"):
            # LoRA: the next round trains and samples plain weights; with several rounds the saved
            # policy is the merged model (an adapter would be relative to the previous round)
            model = model.merge_and_unload()
        self.model = model
        self.save_round_policy(k, metrics)
        return metrics

    def save_round_policy(self, k: int, metrics: dict[str, Any] | None) -> None:
        """Round ``k``'s policy and training metrics, kept until the version is published: a rerun
        after an interruption starts from the last finished round instead of training it again.
        Only the newest round's weights are kept."""
        if self.ctx.is_main:
            folder = self.policy_dir(k)
            shutil.rmtree(folder, ignore_errors=True)
            save_policy(self.model, self.tokenizer, folder)
            write_json(self.done_file(k), {"round": k, "train": metrics})
            if k > 1:
                shutil.rmtree(self.policy_dir(k - 1), ignore_errors=True)
        self.ctx.state.wait_for_everyone()

    def finished_round(self, k: int, last: bool) -> dict[str, Any] | None:
        """The training metrics of a round finished before an interruption (and, for the last
        finished round, its policy, which the next round starts from)."""
        if last:
            folder = self.policy_dir(k)
            self.model = load_causal_lm(str(folder), self.ctx.configs.model).to(self.device)
            log.info("evolve round %d: finished before the interruption; its policy is loaded from %s", k, folder)
        return json.loads(self.done_file(k).read_text())["train"]


def build(ctx: StageContext, plan: StagePlan, *, scorer_factory: Any = None) -> StageResult:
    t_build = time.perf_counter()
    args = ctx.args
    problems, mix_rows = plan.data["problems"], plan.data["mix_rows"]
    rounds = Rounds(ctx, plan, scorer_factory)
    finished = rounds.finished_rounds()
    all_kept: list[dict] = []
    all_discarded: list[dict] = []
    per_round: list[dict] = []
    covered: set[str] = set()
    sampled: set[str] = set()
    for k in range(1, args.rounds + 1):
        t0 = time.perf_counter()
        these = round_problems(problems, args.problems_per_round, k)
        result = rounds.generate(k, these, kept_keys(all_kept))
        metrics = round_metrics(result["rows"], result["summaries"], len(these))
        metrics.update(timing_metrics(result["timings"]))
        metrics.update(generated_problems=result["generated_problems"], resumed_problems=result["resumed_problems"],
                       generation_wall_s=round(time.perf_counter() - t0, 3))
        if metrics["problems_failed"]:
            log.warning("evolve round %d: %d problem(s) failed (generation or scoring raised), e.g. %s", k,
                        metrics["problems_failed"], ", ".join(metrics["failed_ids"][:5]))
            if metrics["problems_failed"] == len(these):
                raise RuntimeError(f"evolve round {k}: every problem failed; see the warnings above")
        kept = [output_row(r, k) for r in result["rows"] if r["kept"]]
        discarded = [output_row(r, k) for r in result["rows"] if not r["kept"] and r["origin"] != "bon_control"]
        ctx.write_jsonl(f"round_{k}/kept.jsonl", kept)
        ctx.write_jsonl(f"round_{k}/problems.jsonl", [{key: v for key, v in s.items() if key != "_summary"}
                                                      for s in result["summaries"]])
        all_kept += kept
        all_discarded += discarded
        covered |= {r["id"] for r in kept}
        sampled |= {p["id"] for p in these}
        log.info("evolve round %d: kept %d of %d solutions (yield %.3f), coverage %.3f (best-of-%d alone %.3f)", k,
                 metrics["kept"], metrics["samples"] + metrics["tree_samples"], metrics["yield"] or 0.0,
                 metrics["coverage"] or 0.0, args.num_samples, metrics["coverage_best_of_n"] or 0.0)
        rows = training_rows(all_kept if args.train_on_all_rounds else kept)
        mixed = mix_sample(mix_rows, len(rows), args.mix_ratio, ctx.seed + k)
        t1 = time.perf_counter()
        if k <= finished:
            metrics["train"] = rounds.finished_round(k, last=k == finished)
        elif rows:
            metrics["train"] = rounds.train(k, rows + training_rows(mixed))
        else:
            log.warning("evolve round %d: nothing kept, so nothing to fine-tune on; the policy is unchanged", k)
            metrics["train"] = None
            rounds.save_round_policy(k, None)
        metrics.update(train_rows=len(rows), mix_rows=len(mixed), train_wall_s=round(time.perf_counter() - t1, 3))
        per_round.append(metrics)
    ctx.write_jsonl("verified.jsonl", all_kept)
    ctx.write_jsonl("discarded.jsonl", all_discarded)
    return StageResult(summary(per_round, covered, sampled, time.perf_counter() - t_build), rounds.model)


def summary(per_round: list[dict], covered: set[str], sampled: set[str], build_s: float) -> dict[str, Any]:
    """The stage's metrics: every round's, and the totals the report shows first."""
    generated = sum(m["samples"] + m["tree_samples"] for m in per_round)
    kept = sum(m["kept"] for m in per_round)
    scoring = sum(m["sandbox_s"] + m["prm_s"] for m in per_round)
    tokens = sum(m["generated_tokens"] for m in per_round)
    generation = sum(m["generation_s"] for m in per_round)
    out: dict[str, Any] = {
        "rounds": per_round,
        "kept": kept,
        "yield": kept / generated if generated else None,
        "coverage": len(covered) / len(sampled) if sampled else None,
        "problems_failed": sum(m["problems_failed"] for m in per_round),
        "generated_tokens": tokens,
        "generated_tokens_per_s": tokens / generation if generation else None,
        "build_wall_s": round(build_s, 3),
        "scoring_share_of_build": scoring / build_s if build_s else None,
    }
    trees = [m["tree_vs_best_of_n"] for m in per_round if "tree_vs_best_of_n" in m]
    if trees:
        out["tree_vs_best_of_n"] = {key: sum(t[key] for t in trees) if all(t[key] is not None for t in trees) else None
                                    for key in ("problems", "tree_solved", "tree_tokens", "best_of_n_solved",
                                                "best_of_n_tokens")}
    return out


def evolve_stage(*, scorer_factory: Any = None) -> Stage:
    """The evolve stage; ``scorer_factory`` is the PRM scorer class (``check(path)`` and
    ``(path, batch_size=, device=).score_steps``)."""
    return Stage("evolve", (EvolveArguments, SFTConfig, ModelConfig),
                 prepare=partial(prepare, scorer_factory=scorer_factory),
                 build=partial(build, scorer_factory=scorer_factory))
