"""The evaluation runner: a model on the recipe's eval sets, through lighteval, offline.

    python -m eval.gsm8k --model runs/tiny/sft [--task pot cot] [--limit N]
        [--backend transformers|vllm] [--samples K] [--prm <checkpoint>]
        [--repair [--repair_rounds R] [--repair_sets SET ...]]
        [--eval_sets data/svamp.jsonl --question_field '{Body} {Question}' --answer_field Answer]
    accelerate launch -m eval.gsm8k --config recipes/tiny/eval.yaml --model runs/tiny/sft

``--model`` is a stage checkpoint (a version folder, or a stage folder: its latest version), a
local model folder or a hub id. ``--config`` is a YAML recipe of the fields of
:class:`EvalArguments` (CLI flags override it). For every eval set (``arith:test:500``,
``gsm8k:test[:n]``, a Problem jsonl, a jsonl with other field names through a field mapping:
``--question_field/--answer_field/--id_field`` or ``<path>?question=...&answer=...``) and every
mode (``pot``: executed Program-of-Thought; ``cot``: lighteval's standard GSM8K prompt and
metric) it reports, over the problems whose gold answer can be read (docs/answers.md; the others
are counted as ``unreadable_gold``)

- greedy pass@1 with its 95% Wilson interval, mean completion tokens, and the shares of
  completions without a program / with an execution error (PoT);
- with ``--samples K`` (K >= 2): unbiased pass@k (k = 1, 2, 4, ..., K) and maj@K over K sampled
  completions; with ``--prm <checkpoint>`` also PRM best-of-K and PRM-weighted maj@K;
- with ``--repair``: pass@1 with repair: the revise stage's verify-then-revise loop
  (``stages.revise_lib.repair``, at most ``--repair_rounds`` rounds) on the greedy PoT answers
  that the verifier (the sandbox, and the PRM of ``--prm`` when given) flags, without the gold;
  beside it what it fixed and broke, the extra tokens, and best-of-(1+R) by the same verifier at
  the same token budget (``eval.repair``).

Results go to ``<checkpoint>/eval/<key>/`` (see ``eval.results``): a complete evaluation of the
same model, config and data is not run again.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval import results as result_store
from eval.hooks import StageUnavailable, load_prm, load_repair, prm_solution_scores, resolve_prm
from eval.metrics import COT, EXEC_MEMO, JUDGE_SECONDS, MODES, POT, sample_ks
from eval.model import BACKENDS, MathforgeModel, load_vllm
from eval.offline import check_versions, configure_offline, lighteval_patches
from eval.passk import summarize_samples
from eval.tasks import TaskSpec, gradable_problems, problems_of, slug, tasks_module
from stages.common.checkpoint import now_iso, package_versions
from stages.common.config import ConfigError, parse_config
from stages.common.data import FieldMap, split_source
from stages.common.modeling import load_causal_lm, load_tokenizer
from stages.common.stats import wilson_interval
from stages.harness.lifecycle import setup_logging

log = logging.getLogger("mathforge.eval")


@dataclass
class EvalArguments:
    """What to evaluate and how (a recipe's eval.yaml holds these fields)."""

    model: str | None = field(default=None, metadata={
        "help": "A stage checkpoint (version or stage folder), a local model folder or a hub id."})
    eval_sets: list[str] = field(default_factory=lambda: ["arith:test:500", "gsm8k:test"], metadata={
        "help": "Problem sources: arith:<split>[:n[:seed]], gsm8k:<split>[:n], a Problem jsonl, or a jsonl "
                "with a field mapping: <path>?question=<field or template>&answer=<field>[&id=<field>]."})
    question_field: str | None = field(default=None, metadata={
        "help": "The question of every jsonl eval set without its own mapping: a field name, or a template "
                "joining fields such as '{Body} {Question}' (default: question)."})
    answer_field: str | None = field(default=None, metadata={
        "help": "The gold answer field of every jsonl eval set without its own mapping (default: answer)."})
    id_field: str | None = field(default=None, metadata={
        "help": "The id field of every jsonl eval set without its own mapping (default: id, else file-line)."})
    task: list[str] = field(default_factory=lambda: ["pot"], metadata={
        "help": "Modes: pot (executed Program-of-Thought) and/or cot (lighteval's GSM8K prompt and metric)."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate the first N problems of each set."})
    backend: str = field(default="transformers", metadata={"help": "transformers or vllm."})
    samples: int = field(default=1, metadata={"help": "K sampled completions per problem for pass@k/maj@k "
                                                      "(1: greedy only)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (with samples > 1)."})
    top_p: float = field(default=1.0, metadata={"help": "Sampling top_p (with samples > 1)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Generation budget of a PoT completion."})
    cot_max_new_tokens: int = field(default=256, metadata={"help": "Generation budget of a CoT completion "
                                                                   "(lighteval's gsm8k: 256)."})
    cot_num_fewshot: int = field(default=0, metadata={"help": "Few-shot examples of the CoT prompt (GSM8K train)."})
    cot_chat_template: bool | None = field(default=None, metadata={
        "help": "Wrap the CoT prompt in the chat template (default: when the tokenizer has one, as lighteval)."})
    batch_size: int = field(default=32, metadata={"help": "Generation batch size."})
    repair: bool = field(default=False, metadata={
        "help": "pass@1 with repair: revise the greedy PoT answers the verifier flags (sandbox + --prm; no gold)."})
    repair_rounds: int = field(default=3, metadata={"help": "Revision rounds at most."})
    repair_sets: list[str] | None = field(default=None, metadata={
        "help": "The eval sets to repair (default: every set)."})
    repair_threshold: float | None = field(default=0.5, metadata={
        "help": "A step the PRM scores under this is flagged (null: the PRM only ranks versions)."})
    repair_prompt: str = field(default="feedback", metadata={
        "help": "feedback (numbered steps, the flagged step and why) or prefill (the plain PoT prompt); the kept "
                "steps are prefilled either way."})
    repair_temperature: float = field(default=0.0, metadata={"help": "Temperature of revisions (0: greedy)."})
    repair_candidates: int = field(default=1, metadata={"help": "Revisions sampled per round; the best is kept."})
    repair_final: str = field(default="best", metadata={
        "help": "The answer kept: best (the best-verified version), vote (the answer most of the loop's runs print), "
                "last."})
    repair_restart_after: int | None = field(default=None, metadata={
        "help": "Rounds revising from the flagged step; later rounds rewrite the whole program (null: never)."})
    repair_grounding: bool = field(default=False, metadata={
        "help": "The verifier also flags a program that leaves a number of the problem unused or writes one the "
                "problem does not give (stages/revise_lib/grounding.py: for quantity word problems)."})
    repair_max_growth: float = field(default=0.5, metadata={
        "help": "A revised program may grow to (1 + this) x the original's tokens (+16)."})
    repair_max_new_tokens: int = field(default=256, metadata={"help": "Generation budget of a revision."})
    repair_batch_size: int | None = field(default=None, metadata={
        "help": "Prompts per generate call in the repair loop and its best-of comparison, each prompt with its "
                "candidates or samples (default: batch_size). On CPU about 128 sequences at once is the fastest."})
    repair_baseline: bool = field(default=True, metadata={
        "help": "Also best-of-(1+R) by the verifier on the flagged answers, all R samples and at the same token "
                "budget."})
    repair_baseline_temperature: float = field(default=0.7, metadata={"help": "Temperature of those samples."})
    prm: str | None = field(default=None, metadata={
        "help": "PRM checkpoint: PRM-weighted best-of-K (with --samples) and the repair verifier (with --repair); "
                "'@prm' is the prm stage of the evaluated checkpoint's run (left out, with a warning, when that run "
                "has none)."})
    prm_aggregation: str = field(default="min", metadata={"help": "Step-score aggregation: min, product, last, mean."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    dtype: str = field(default="auto", metadata={"help": "Model dtype: auto, float32, bfloat16, float16."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Results folder (default: <checkpoint>/eval, or runs/eval/<model> for other models)."})
    progress: bool = field(default=False, metadata={"help": "Show generation progress bars."})


# Fields that change where results go or what is printed, not the numbers: not in the key.
NON_SEMANTIC = frozenset({"model", "output_dir", "progress"})


def parse_args(argv: list[str] | None = None) -> EvalArguments:
    try:
        (args,) = parse_config((EvalArguments,), argv, prog="eval.gsm8k")
    except ConfigError as e:
        raise SystemExit(f"eval: {e}") from e
    validate(args)
    args.eval_sets = mapped_eval_sets(args)
    return args


def field_map(args: EvalArguments) -> FieldMap | None:
    """The field mapping of ``--question_field/--answer_field/--id_field`` (None without any)."""
    given = {k: v for k, v in (("question", args.question_field), ("answer", args.answer_field),
                               ("id", args.id_field)) if v is not None}
    return FieldMap(**given) if given else None


def _is_jsonl_set(source: str) -> bool:
    return source.partition(":")[0] not in ("arith", "gsm8k")


def mapped_eval_sets(args: EvalArguments) -> list[str]:
    """The eval sets, each jsonl set without a mapping of its own given the command line's
    (``data.jsonl`` -> ``data.jsonl?question=...&answer=...``): the mapping is part of the set's
    name in the results, and of its key."""
    fields = field_map(args)
    if fields is None:
        return list(args.eval_sets)
    return [f"{s}?{fields.spec()}" if _is_jsonl_set(s) and split_source(s)[1] is None else s
            for s in args.eval_sets]


def validate(args: EvalArguments) -> None:
    """Refuse a config that cannot run, before anything is loaded."""
    problems = []
    if not args.model:
        problems.append("--model is required (a checkpoint, a model folder or a hub id)")
    bad = [t for t in args.task if t not in MODES]
    if bad or not args.task:
        problems.append(f"--task must be among {MODES}, got {args.task}")
    if not args.eval_sets:
        problems.append("eval_sets is empty")
    if args.backend not in BACKENDS:
        problems.append(f"--backend must be one of {BACKENDS}, got {args.backend!r}")
    if args.samples < 1:
        problems.append(f"--samples must be >= 1, got {args.samples}")
    if args.prm and args.samples < 2 and not args.repair:
        problems.append("--prm scores sampled completions or verifies repairs: it needs --samples K with K >= 2, "
                        "or --repair")
    if args.repair:
        problems += repair_problems(args)
    if args.repair and POT not in args.task:
        problems.append("--repair repairs PoT programs: it needs --task pot")
    if args.repair and args.backend != "transformers":
        problems.append("--repair needs --backend transformers (the revise stage generates with transformers)")
    if args.limit is not None and args.limit < 1:
        problems.append(f"--limit must be >= 1, got {args.limit}")
    if args.repair_batch_size is not None and args.repair_batch_size < 1:
        problems.append(f"--repair_batch_size must be >= 1, got {args.repair_batch_size}")
    if args.dtype not in ("auto", "float32", "bfloat16", "float16"):
        problems.append(f"--dtype must be auto, float32, bfloat16 or float16, got {args.dtype!r}")
    mapping = [v for v in (args.question_field, args.answer_field, args.id_field) if v is not None]
    if any(not v.strip() for v in mapping):
        problems.append("--question_field, --answer_field and --id_field must name a field")
    elif mapping and not any(_is_jsonl_set(s) for s in args.eval_sets):
        problems.append("--question_field/--answer_field/--id_field map the fields of jsonl eval sets; "
                        f"eval_sets has none: {args.eval_sets}")
    if problems:
        raise SystemExit("eval: " + "; ".join(problems))


def repair_problems(args: EvalArguments) -> list[str]:
    """What is wrong with ``--repair`` and its options (the loop's own checks included)."""
    from eval.hooks import StageUnavailable, load_repair  # deferred: the revise library only with --repair

    unknown = [s for s in args.repair_sets or [] if s not in args.eval_sets]
    problems = [f"--repair_sets {unknown} are not among eval_sets {args.eval_sets}"] if unknown else []
    try:
        repair_options(args, load_repair()).check()
    except StageUnavailable as e:
        problems.append(str(e))
    except ValueError as e:
        problems.append(f"--repair: {e}")
    return problems


def repair_options(args: EvalArguments, loop: Any) -> Any:
    """The loop's options (``loop.RepairOptions``) from the ``--repair_*`` flags."""
    return loop.RepairOptions(rounds=args.repair_rounds, threshold=args.repair_threshold, prompt=args.repair_prompt,
                              max_growth=args.repair_max_growth, max_new_tokens=args.repair_max_new_tokens,
                              temperature=args.repair_temperature, candidates=args.repair_candidates,
                              batch_size=args.repair_batch_size or args.batch_size, seed=args.seed,
                              aggregation=args.prm_aggregation,
                              final=args.repair_final, grounding=args.repair_grounding,
                              restart_after=args.repair_restart_after)


def semantic_config(args: EvalArguments) -> dict:
    return {k: v for k, v in sorted(dataclasses.asdict(args).items()) if k not in NON_SEMANTIC}


def task_specs(args: EvalArguments) -> list:
    """The lighteval tasks of a run: each set in each mode, greedy, plus sampled when K >= 2."""
    specs = []
    for source in args.eval_sets:
        for mode in args.task:
            kw: dict[str, Any] = {"limit": args.limit}
            if mode == COT:
                kw.update(max_new_tokens=args.cot_max_new_tokens, num_fewshot=args.cot_num_fewshot)
            else:
                kw.update(max_new_tokens=args.max_new_tokens)
            specs.append(TaskSpec(source, mode, 1, **kw))
            if args.samples > 1:
                specs.append(TaskSpec(source, mode, args.samples, **kw))
    return specs


# ---------------------------------------------------------------------------------------------
# Running lighteval


def run_lighteval(lm: Any, specs: list) -> tuple[dict[str, list], dict[str, dict]]:
    """Evaluate ``specs`` with lighteval's Pipeline on ``lm``; returns (details, aggregated
    metrics), both by lighteval task name (``name|fewshot``). Every process computes the metrics
    (launcher NONE), so every rank holds the judgments the repair and PRM steps need."""
    import torch  # deferred: heavy import
    from lighteval.logging.evaluation_tracker import EvaluationTracker  # deferred: heavy import

    # lighteval.pipeline imports lighteval's transformers model, whose module body calls
    # torch.set_grad_enabled(False) for the whole process: a stage that evaluates and then trains
    # (or a test session) would silently train nothing. Import it with the grad mode restored.
    grad_mode = torch.is_grad_enabled()
    try:
        from lighteval.pipeline import (  # deferred: heavy import
            ParallelismManager,
            Pipeline,
            PipelineParameters,
        )
    finally:
        torch.set_grad_enabled(grad_mode)


    module = tasks_module(specs)
    with lighteval_patches(), tempfile.TemporaryDirectory(prefix="mathforge-lighteval-") as tmp:
        tracker = EvaluationTracker(output_dir=tmp, save_details=False)
        params = PipelineParameters(launcher_type=ParallelismManager.NONE, custom_tasks_directory=module)
        pipeline = Pipeline(tasks=",".join(s.full_name for s in specs), pipeline_parameters=params,
                            evaluation_tracker=tracker, model=lm)
        pipeline.evaluate()
        details = {k: list(v) for k, v in pipeline.get_details().items()}
        aggregated = {k: dict(v) for k, v in tracker.metrics_logger.metric_aggregated.items()}
    return details, aggregated


def _ordered(details: list) -> list:
    return sorted(details, key=lambda d: int(d.doc.specific["index"]))


def greedy_summary(mode: str, rows: list[dict]) -> dict:
    """pass@1 and the completion statistics of greedy rows (the fields evaluate_pot reports)."""
    n = len(rows)
    k = sum(r["correct"] for r in rows)
    lo, hi = wilson_interval(k, n)
    out = {"n": n, "pass@1": k / n if n else 0.0, "pass@1_ci95": [lo, hi],
           "mean_completion_tokens": sum(r["n_tokens"] for r in rows) / n if n else 0.0}
    if mode == POT:
        out["no_program_rate"] = sum(r["status"] == "no_code" for r in rows) / n if n else 0.0
        out["exec_error_rate"] = sum(r["status"] not in ("ok", "no_code") for r in rows) / n if n else 0.0
    else:
        out["no_answer_rate"] = sum(r["status"] == "no_answer" for r in rows) / n if n else 0.0
    return out


def detail_rows(spec: Any, details: list, tokenizer: Any, decoding: str) -> list[list[dict]]:
    """Per problem, one row per sample (problem fields, completion, verdict, token count)."""
    out = []
    for d in _ordered(details):
        s = d.doc.specific
        rows = []
        for i, (text, j) in enumerate(zip(d.model_response.final_text, s["judgments"], strict=True)):
            rows.append({"id": s["id"], "question": s["question"], "answer": s["gold"], "mode": spec.mode,
                         "decoding": decoding, "sample": i, "completion": text,
                         "executed_answer" if spec.mode == "pot" else "extracted_answer": j["answer"],
                         "correct": bool(j["correct"]), "status": j["status"], "error_type": j["error_type"],
                         "n_tokens": len(tokenizer(text, add_special_tokens=False)["input_ids"])})
        out.append(rows)
    return out


def evaluate(args: EvalArguments, model: Any, tokenizer: Any, *, repair_loop: Any = None, prm: Any = None,
             llm: Any = None) -> tuple[dict, dict[str, list[dict]], list[dict]]:
    """Run every task; returns (metrics by set and mode, detail rows by file name, timings)."""
    specs = task_specs(args)
    lm = MathforgeModel(llm if llm is not None else model, tokenizer, name=args.model or "model",
                        batch_size=args.batch_size, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                        cot_chat_template=args.cot_chat_template, backend=args.backend, progress=args.progress)
    EXEC_MEMO.clear()  # the judge fills it with this evaluation's sandbox results; the repair loop reuses them
    details, aggregated = run_lighteval(lm, specs)
    metrics: dict[str, dict[str, dict]] = {}
    files: dict[str, list[dict]] = {}
    to_repair: list[tuple[dict, list[dict]]] = []  # (metrics entry, greedy rows) of each repaired set
    for spec in specs:
        entry = metrics.setdefault(spec.source, {}).setdefault(spec.mode, {})
        name = f"{spec.mode}_{slug(spec.source)}"
        entry["unreadable_gold"] = gradable_problems(spec.source, spec.limit)[1]
        if spec.samples == 1:
            per_problem = detail_rows(spec, details[spec.full_name], tokenizer, "greedy")
            greedy = [rows[0] for rows in per_problem]
            entry.update(greedy_summary(spec.mode, greedy))
            if spec.mode == POT and args.repair and spec.source in (args.repair_sets or args.eval_sets):
                to_repair.append((entry, greedy))
            files.setdefault(name, []).extend(greedy)
        else:
            per_problem = detail_rows(spec, details[spec.full_name], tokenizer, "sample")
            prm_scores = prm_step(args, prm, per_problem) if prm is not None else None
            sampled = summarize(per_problem, args.samples, prm_scores)
            entry["sampled"] = {"samples": args.samples, "temperature": args.temperature, "top_p": args.top_p,
                                "mean_completion_tokens": _mean(r["n_tokens"] for rows in per_problem for r in rows),
                                **sampled}
            files.setdefault(name, []).extend(r for rows in per_problem for r in rows)
        entry.setdefault("lighteval", {})[spec.full_name] = aggregated.get(spec.full_name, {})
    if to_repair:  # every repaired set in one loop: a round is one batch for all of them
        repaired = repair_step(args, model, tokenizer, [greedy for _, greedy in to_repair], repair_loop, prm)
        for (entry, _), result in zip(to_repair, repaired, strict=True):
            entry["repair"] = result
    EXEC_MEMO.clear()
    timings = [{**c, "judge_s": JUDGE_SECONDS.get(c["task"], 0.0)} for c in lm.generation_calls]
    return metrics, files, timings


def summarize(per_problem: list[list[dict]], n: int, prm_scores: list[list[float]] | None) -> dict:
    return summarize_samples(per_problem, sample_ks(n), prm_scores)


def prm_step(args: EvalArguments, prm: Any, per_problem: list[list[dict]]) -> list[list[float]]:
    """PRM score of every sample (one batched call), stored in the rows too."""
    flat = [r for rows in per_problem for r in rows]
    scores = prm_solution_scores(prm, [r["question"] for r in flat], [r["completion"] for r in flat],
                                 args.prm_aggregation)
    it = iter(scores)
    out = []
    for rows in per_problem:
        s = [next(it) for _ in rows]
        for r, v in zip(rows, s, strict=True):
            r["prm_score"] = v
        out.append(s)
    return out


def repair_step(args: EvalArguments, model: Any, tokenizer: Any, sets: list[list[dict]], repair_loop: Any,
                prm: Any) -> list[dict]:
    """pass@1 with repair on the greedy PoT rows of each repaired set, all in one loop
    (``eval.repair.repair_eval_sets``): the verifier (the sandbox, the PRM when there is one, the
    quantity check with --repair_grounding) flags answers without the gold, the loop revises them, the
    gold judges the finals; best-of-(1+R) by the same verifier for comparison. One metrics dict per set."""
    from eval.repair import repair_eval_sets  # deferred: generation and the sandbox only with --repair
    from stages.harness.policy import Policy  # deferred: loads the harness only with --repair

    return repair_eval_sets(Policy(model, tokenizer), sets, repair_loop, repair_options(args, repair_loop),
                            scorer=prm, baseline=args.repair_baseline,
                            baseline_temperature=args.repair_baseline_temperature, memo=EXEC_MEMO,
                            progress=args.progress)


def _mean(values) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else 0.0


# ---------------------------------------------------------------------------------------------
# Entry point


def load_model(args: EvalArguments, path: str) -> tuple[Any, Any]:
    import torch  # deferred: heavy import
    from accelerate import PartialState  # deferred: heavy import


    tokenizer = load_tokenizer(path, padding_side="left")
    if args.backend == "vllm":
        return None, tokenizer
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    model = load_causal_lm(path, None, dtype=dtype)
    model.to(PartialState().device)
    model.eval()
    return model, tokenizer


def init_state() -> Any:
    """accelerate's process state, made first: a bare ``PartialState()`` on a machine without
    CUDA ignores ``accelerate launch``'s CPU processes (every rank would think it is alone and the
    main one); ``cpu=True`` there makes them a gloo process group."""
    import torch  # deferred: heavy import
    from accelerate import PartialState  # deferred: heavy import

    return PartialState(cpu=not torch.cuda.is_available())


def main(argv: list[str] | None = None) -> Path | None:
    configure_offline()  # before huggingface_hub / datasets / transformers are imported
    args = parse_args(argv)
    try:
        check_versions()
    except RuntimeError as e:
        raise SystemExit(f"eval: {e}") from e


    state = init_state()
    setup_logging()
    if args.backend == "vllm" and state.num_processes > 1:
        raise SystemExit("eval: --backend vllm runs in one process (vLLM parallelises itself); "
                         "launch without accelerate's multi-process config")
    identity = result_store.model_identity(args.model)
    data = {}
    for source in args.eval_sets:
        try:
            data[source] = result_store.problems_sha256(problems_of(source)[: args.limit])
            gradable, unreadable = gradable_problems(source, args.limit)
        except (OSError, ValueError) as e:
            raise SystemExit(f"eval: eval set '{source}': {e}") from e
        if not gradable:
            raise SystemExit(f"eval: eval set '{source}': none of its {unreadable} gold answers can be read "
                             f"(the rules: docs/answers.md; a field mapping may pick the wrong field)")
    config = semantic_config(args)
    if args.samples > 1:  # sampling seeds each rank differently: the process count changes the samples
        config["world_size"] = state.num_processes
    try:
        repair_loop = load_repair() if args.repair else None
        prm_path = resolve_prm(args.prm, identity) if args.prm else None
    except StageUnavailable as e:
        raise SystemExit(f"eval: {e}") from e
    if prm_path is not None:  # '@prm' names different checkpoints over time: the key holds the one used
        config["prm_checkpoint"] = {k: v for k, v in result_store.model_identity(prm_path).items() if k != "spec"}
    if args.repair and prm_path is None:
        verifier = ("the sandbox and the quantity check (answers whose program fails or whose numbers are not the "
                    "problem's are revised; candidates are not ranked by a PRM)" if args.repair_grounding else
                    "the sandbox signal alone (answers whose program fails are revised; wrong answers of programs "
                    "that run are not flagged)")
        log.warning("--repair without a PRM (%s): the verifier is %s",
                    "none given" if not args.prm else f"{args.prm} does not exist in this run", verifier)

    root = result_store.results_root(identity, args.output_dir)
    key = None
    if identity["kind"] != "hub":
        key = result_store.eval_key(identity, config, data)
        done = result_store.find_complete(root, key)
        if done is not None:
            if state.is_main_process:
                print(f"[eval] already evaluated: {done} (same model, config and data); skipping")
            return done

    started, t0 = now_iso(), time.perf_counter()
    model, tokenizer = load_model(args, identity["path"])
    prm = load_prm(prm_path) if prm_path is not None else None
    llm = None
    if args.backend == "vllm":

        llm = load_vllm(identity["path"], dtype=args.dtype, seed=args.seed)
    if key is None:  # a hub model: its weights are pinned by the commit it resolved to
        identity["commit"] = getattr(getattr(model, "config", None), "_commit_hash", None)
        key = result_store.eval_key(identity, config, data)
        done = result_store.find_complete(root, key)
        if done is not None:
            if state.is_main_process:
                print(f"[eval] already evaluated: {done}; skipping")
            return done

    metrics, files, timings = evaluate(args, model, tokenizer, repair_loop=repair_loop, prm=prm, llm=llm)
    if not state.is_main_process:
        return None
    results = {"format": result_store.FORMAT_VERSION, "key": key, "model": identity, "config": config, "data": data,
               "sets": metrics, "timings": timings, "world_size": state.num_processes,
               "packages": package_versions(), "started_at": started, "finished_at": now_iso(),
               "wall_s": time.perf_counter() - t0}
    folder = result_store.publish(root, key, results, files, {"model": args.model, **config})
    print_summary(metrics)
    print(f"[eval] wrote {folder}")
    return folder


def print_summary(metrics: dict) -> None:
    for source, modes in metrics.items():
        for mode, m in modes.items():
            line = f"[eval] {source:<20} {mode}"
            if "pass@1" in m:
                lo, hi = m["pass@1_ci95"]
                line += f"  pass@1={m['pass@1']:.3f} [{lo:.3f}, {hi:.3f}] (n={m['n']})"
            for k, v in (m.get("sampled") or {}).items():
                if k.startswith(("pass@", "maj@", "prm_")):
                    line += f"  {k}={v:.3f}"
            if m.get("unreadable_gold"):
                line += f"  (left out: {m['unreadable_gold']} unreadable gold answers)"
            print(line)
            if "repair" in m:
                from eval.repair import summary_line  # deferred: only when repair ran

                print(f"[eval] {source:<20} {mode}  {summary_line(m['repair'])}")


if __name__ == "__main__":
    main()
