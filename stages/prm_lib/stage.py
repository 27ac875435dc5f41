"""The PRM stage: step labels, a process reward model, reweighting, evaluation.

``prepare`` validates the recipe and reads every input; ``build`` labels solutions (MC rollouts
by the policy, an LLM judge, or imported files), trains the PRM (token classification, or the
implicit PRM: a causal LM scored by its log-likelihood ratio to a frozen reference), optionally
reweighted (DreamPRM), saves it with its encoding config, and evaluates it (step metrics,
ProcessBench first-error F1, best-of-N).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.common.chat import ResponseCache
from stages.common.config import ConfigError
from stages.common.data import DataFormatError, load_problems
from stages.common.modeling import (
    full_state_dict,
    load_causal_lm,
    load_tokenizer,
    materialize_parent,
    peft_config,
)
from stages.harness import Policy, StageArguments, StageConfigs, StageContext, StagePlan, StageResult
from stages.harness.policy import load_policy, sample_solutions
from stages.prm_lib import labelling
from stages.prm_lib.implicit import REFERENCE_DIR, ImplicitHead
from stages.prm_lib.model import EncodingConfig, load_token_classifier
from stages.prm_lib.reweight import DreamPRMReweighter, save_weights
from stages.prm_lib.scorer import PRMScorer
from stages.prm_lib.trainer import PRMCollator, PRMTrainer, featurize

log = logging.getLogger("mathforge.prm")


@dataclass
class PRMStageArguments(StageArguments):
    """Arguments of the PRM stage besides ``TrainingArguments`` and ``ModelConfig`` (the PRM backbone)."""

    policy: str = field(default="@sft", metadata={"help": "Policy that writes (and rolls out) solutions: @<stage>, "
                                                           "a checkpoint, a folder or a hub id."})
    label_source: str = field(default="mc", metadata={"help": "mc | judge | import"})
    label_problems: str = field(default="arith:train:200", metadata={"help": "Problems the policy solves for labels."})
    samples_per_problem: int = field(default=4, metadata={"help": "Policy samples per problem (mistake mining)."})
    sample_temperature: float = 1.0
    mining_low: float = field(default=0.3, metadata={"help": "Mistake mining: preferred solve-rate range, low end."})
    mining_high: float = 0.8
    max_label_solutions: int = field(default=200, metadata={"help": "Label at most this many solutions."})
    mc_rollouts: int = field(default=4, metadata={"help": "k completions per step prefix (Math-Shepherd)."})
    rollout_temperature: float = 1.0
    mc_label: str = field(default="hard", metadata={"help": "Which MC label trains: hard (any correct) or soft."})
    mc_skip_correct: bool = field(default=False, metadata={
        "help": "Hard labels only: every prefix of a correct solution is positive (its own continuation is a "
                "correct completion), so only wrong solutions are rolled out."})
    perturbed_negatives: int = field(default=0, metadata={
        "help": "Add up to this many pairs from correct policy samples: the solution and a copy with one step "
                "made wrong (a number, an operator or a variable changed; kept only when the answer changes)."})
    max_correct_per_wrong: float | None = field(default=None, metadata={
        "help": "Keep at most this many correct solutions per wrong one among the labelled solutions."})
    gen_max_new_tokens: int = 128
    gen_batch_size: int = 64
    judge: str = field(default="local", metadata={"help": "openai | local (the synth stage's chat models)."})
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_generates: bool = field(default=False, metadata={"help": "The judge also writes the solutions."})
    judge_transform: str = field(default="none", metadata={"help": "none | he | se"})
    seed_judge: int = 0
    import_files: list[str] = field(default_factory=list)
    import_format: str = field(default="stepwise", metadata={"help": "stepwise | prm800k | math_shepherd | "
                                                                       "pi_scores | text_label"})
    prm800k_mode: str = field(default="neutral_positive", metadata={"help": "three | neutral_positive | "
                                                                             "neutral_negative"})
    import_label_map: str | None = field(default=None, metadata={"help": "JSON object for text_label rows."})
    prm_type: str = field(default="token_classification", metadata={
        "help": "token_classification (a head at each step's last token) | implicit (a causal LM's summed "
                "log-likelihood ratio to a frozen reference up to each step; stages.prm_lib.implicit)."})
    implicit_beta: float = field(default=1.0, metadata={"help": "implicit: step logit = beta * summed log-ratio."})
    implicit_reference: str | None = field(default=None, metadata={
        "help": "implicit: the frozen reference model; default (or @backbone) the PRM backbone's starting weights."})
    label_mode: str = field(default="hard", metadata={"help": "hard | soft | three"})
    step_separator: str = "\n"
    chat_template: bool = True
    max_length: int = 512
    label_threshold: float = field(default=0.5, metadata={"help": "Soft label >= this counts as correct."})
    last_step_only: bool = False
    class_weights: list[float] | None = None
    reweight: str = field(default="none", metadata={"help": "none | instance | domain (DreamPRM)."})
    baseline: bool = field(default=False, metadata={"help": "Switch reweighting off (the baseline run)."})
    meta_fraction: float = 0.2
    meta_lr: float = 0.1
    eval_fraction: float = field(default=0.2, metadata={"help": "Labelled rows held out for step metrics."})
    bon_problems: str = field(default="arith:test:500", metadata={"help": "Best-of-N problems ('none' to skip)."})
    bon_n: int = 8
    bon_temperature: float = 1.0


def prepare(configs: StageConfigs) -> StagePlan:
    args, cfg, model_args = configs.args, configs.training, configs.model
    if not model_args.model_name_or_path:
        raise ConfigError("model_name_or_path (the PRM backbone) is required: @sft, a folder, a checkpoint or tiny")
    for name, value, allowed in (("label_source", args.label_source, ("mc", "judge", "import")),
                                 ("judge_transform", args.judge_transform, ("none", "he", "se")),
                                 ("mc_label", args.mc_label, ("hard", "soft")),
                                 ("reweight", args.reweight, ("none", "instance", "domain"))):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if args.mc_skip_correct and args.mc_label != "hard":
        raise ConfigError("mc_skip_correct needs mc_label: hard (a soft label needs the rollouts it would skip)")
    if args.max_correct_per_wrong is not None and args.max_correct_per_wrong < 0:
        raise ConfigError(f"max_correct_per_wrong must be >= 0, got {args.max_correct_per_wrong}")
    try:
        enc = labelling.encoding_config(args)  # validates label_mode, prm_type, implicit_beta
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if args.class_weights and len(args.class_weights) != enc.num_labels:
        raise ConfigError(f"class_weights needs {enc.num_labels} values for label_mode {args.label_mode}")
    try:
        label_map = labelling.parse_label_map(args.import_label_map)
        imported = labelling.imported_rows(args.import_files, args.import_format, prm800k_mode=args.prm800k_mode,
                                           label_map=label_map) if args.label_source == "import" else []
    except ValueError as e:
        if isinstance(e, DataFormatError):
            raise
        raise ConfigError(str(e)) from e
    if args.label_source == "import" and not imported:
        raise ConfigError("label_source import needs import_files with at least one row")
    label_problems = load_problems(args.label_problems, seed=cfg.seed) if args.label_source != "import" else []
    bon = [] if args.bon_problems.lower() == "none" else load_problems(args.bon_problems, seed=cfg.seed)
    needs_policy = args.label_source == "mc" or (args.label_source == "judge" and not args.judge_generates) or bon
    inputs = [f for f in args.import_files if Path(f).is_file()]
    details = {"label_source": args.label_source, "label_problems": len(label_problems), "imported_rows": len(imported),
               "prm_type": args.prm_type, "label_mode": args.label_mode,
               "reweight": "off" if args.baseline else args.reweight, "best_of_n_problems": len(bon),
               "policy": args.policy if needs_policy else None}
    return StagePlan(parent=model_args.model_name_or_path, inputs=inputs, details=details,
                     data={"encoding": enc, "imported": imported, "label_problems": label_problems, "bon": bon,
                           "needs_policy": bool(needs_policy)}, seed=cfg.seed)


def _policy_samples(args: PRMStageArguments, policy: Policy, problems: list[dict], seed: int) -> list[dict]:
    return labelling.with_domains(sample_solutions(
        policy, problems, n=args.samples_per_problem, temperature=args.sample_temperature,
        max_new_tokens=args.gen_max_new_tokens, batch_size=args.gen_batch_size, seed=seed), problems)


def _mined(args: PRMStageArguments, samples: list[dict]) -> tuple[list[dict], dict]:
    return labelling.mined_solutions(samples, low=args.mining_low, high=args.mining_high,
                                     limit=args.max_label_solutions, max_correct_per_wrong=args.max_correct_per_wrong)


def make_labels(ctx: StageContext, args: PRMStageArguments, seed: int, policy: Policy | None, imported: list[dict],
                label_problems: list[dict], metrics: dict, timings: dict) -> list[dict]:
    """Step-labelled rows: imported, judged by an LLM, or from Math-Shepherd MC rollouts."""
    if args.label_source == "import":
        return imported
    if args.label_source == "judge":
        chat = labelling.judge_model(args, ctx.run_dir)
        cache = ResponseCache(ctx.run_dir / "prm_judge_cache.jsonl")  # outside the version: a rerun pays nothing
        with labelling.timed("sample_s", timings):
            if args.judge_generates:
                samples = labelling.teacher_solutions(chat, cache, label_problems, args.samples_per_problem,
                                                      args.gen_max_new_tokens)
            else:
                samples = _policy_samples(args, policy, label_problems, seed)
        chosen, mining = _mined(args, samples)
        with labelling.timed("label_s", timings):
            rows, failed = labelling.judge_rows(chat, cache, chosen, args.judge_transform)
        metrics["labels"] = {**mining, "solutions": len(chosen), "judge_failed": failed,
                             "judge_usage": chat.usage.to_json()}
        return rows
    with labelling.timed("sample_s", timings):
        samples = _policy_samples(args, policy, label_problems, seed)
    chosen, mining = _mined(args, samples)
    with labelling.timed("label_s", timings):
        rows = labelling.mc_rows(policy, chosen, args, seed)
    if args.perturbed_negatives:
        with labelling.timed("perturb_s", timings):
            extra = labelling.perturbed_rows(samples, args.perturbed_negatives, seed, exclude=chosen)
        metrics["perturbed_pairs"] = len(extra) // 2
        rows += extra
    if args.mc_label == "soft":
        for r in rows:
            r["hard_labels"], r["labels"] = r["labels"], r["soft_labels"]
    steps = [x for r in rows for x in r["soft_labels"]]
    metrics["labels"] = {**mining, "solutions": len(rows), "steps": len(steps),
                         "perturbed_solutions": sum(bool(r.get("perturbed")) for r in rows),
                         "solution_accuracy": sum(r["solution_correct"] for r in rows) / len(rows) if rows else 0.0,
                         "hard_positive_rate": sum(x > 0 for x in steps) / len(steps) if steps else 0.0,
                         "mean_soft_label": sum(steps) / len(steps) if steps else 0.0}
    return rows


def build(ctx: StageContext, plan: StagePlan) -> StageResult:
    args, cfg, model_args = ctx.args, ctx.configs.training, ctx.configs.model
    enc: EncodingConfig = plan.data["encoding"]
    bon = plan.data["bon"]
    timings: dict[str, float] = {}
    metrics: dict[str, Any] = {}
    seed = cfg.seed
    policy = None
    if plan.data["needs_policy"]:
        policy_path = materialize_parent(args.policy, ctx.run_dir, is_main=ctx.is_main, seed=seed).path
        policy = load_policy(policy_path)
        metrics["policy"] = policy_path
    with labelling.timed("labels_total_s", timings):
        rows = make_labels(ctx, args, seed, policy, plan.data["imported"], plan.data["label_problems"], metrics,
                           timings)
    if not rows:
        raise ValueError("no labelled solutions: the policy wrote no program with steps (is it trained?)")
    ctx.write_jsonl("labels.jsonl", rows)
    train_rows, eval_rows = labelling.split_rows(rows, args.eval_fraction, seed)
    eval_rows = [r for r in eval_rows if not r.get("perturbed")]  # step metrics: the policy's own solutions
    tokenizer = load_tokenizer(ctx.parent.path, padding_side="right")
    head = reference = None
    if enc.prm_type == "implicit":
        model = load_causal_lm(ctx.parent.path, model_args)
        ref_path = ctx.parent.path if args.implicit_reference in (None, "", "@backbone") else materialize_parent(
            args.implicit_reference, ctx.run_dir, is_main=ctx.is_main, seed=seed).path
        reference = load_causal_lm(ref_path, model_args)
        sizes = (model.get_input_embeddings().weight.shape[0], reference.get_input_embeddings().weight.shape[0])
        if sizes[0] != sizes[1]:
            raise ValueError(f"implicit_reference {ref_path}: vocabulary of {sizes[1]} tokens, the backbone has "
                             f"{sizes[0]}; the log-ratio needs the same tokenizer")
        head = ImplicitHead(reference, enc.implicit_beta)
        metrics["implicit_reference"] = str(ref_path)
        peft = peft_config(model_args, "CAUSAL_LM")
    else:
        model = load_token_classifier(ctx.parent.path, enc.num_labels, model_args)
        peft = peft_config(model_args, "TOKEN_CLS")
    if peft is not None:
        from peft import get_peft_model  # deferred: heavy

        model = get_peft_model(model, peft)
    feat_kw = {"last_step_only": args.last_step_only, "hard_threshold": args.label_threshold}
    reweighter = None
    if args.reweight != "none" and not args.baseline:
        train_rows, meta_rows = labelling.split_rows(train_rows, args.meta_fraction, seed + 1)
        feats = featurize(train_rows, tokenizer, enc, **feat_kw)
        reweighter, names = _reweighter(args, cfg, enc, tokenizer, train_rows, feats,
                                        featurize(meta_rows, tokenizer, enc, **feat_kw), seed, head)
    else:
        feats = featurize(train_rows, tokenizer, enc, **feat_kw)
    cfg.remove_unused_columns = False
    trainer = PRMTrainer(model=model, args=cfg, train_dataset=feats, data_collator=PRMCollator(tokenizer.pad_token_id),
                         label_mode=enc.label_mode, class_weights=args.class_weights, instance_weight_fn=reweighter,
                         step_head=head)
    with labelling.timed("train_s", timings):
        metrics.update(ctx.train(trainer))
    metrics["train_rows"], metrics["eval_rows"] = len(feats), len(eval_rows)
    state_dict = full_state_dict(trainer) if peft is None else None  # every rank: FSDP / ZeRO-3 shards gathered
    model = trainer.model
    if peft is not None:
        model = model.merge_and_unload()  # the scorer loads plain weights
    model.eval()
    if ctx.is_main:
        model.save_pretrained(ctx.work_dir, state_dict=state_dict)
        tokenizer.save_pretrained(ctx.work_dir)
        enc.save(ctx.work_dir)
        if reference is not None:  # a self-contained checkpoint: the scorer needs the reference too
            reference.save_pretrained(ctx.work_dir / REFERENCE_DIR)
        if reweighter is not None:
            metrics["reweight"] = _save_reweight(reweighter, names, ctx.work_dir, args.reweight)
    scorer = PRMScorer(ctx.work_dir, model=model, tokenizer=tokenizer, config=enc, batch_size=32, reference=reference)
    with labelling.timed("eval_steps_s", timings):
        if eval_rows:
            metrics["eval"] = labelling.evaluate_steps(scorer, eval_rows, args.label_threshold)
    if bon:
        with labelling.timed("best_of_n_s", timings):
            samples = labelling.with_domains(sample_solutions(
                policy, bon, n=args.bon_n, temperature=args.bon_temperature, max_new_tokens=args.gen_max_new_tokens,
                batch_size=args.gen_batch_size, seed=seed + 7), bon)
            metrics["best_of_n"], details = labelling.evaluate_best_of_n(scorer, samples, args.bon_n, seed)
        ctx.write_jsonl("best_of_n_details.jsonl", details)
        b = metrics["best_of_n"]
        log.info("best-of-%d on %d problems: PRM(min) %.3f %s, random %.3f %s, majority %.3f", args.bon_n,
                 b["n_problems"], b["prm_min"]["accuracy"], b["prm_min"]["ci95"], b["random"]["accuracy"],
                 b["random"]["ci95"], b["majority_vote"]["accuracy"])
    metrics["timings_s"] = timings
    metrics["train_and_eval_s"] = round(sum(v for k, v in timings.items() if k != "labels_total_s"), 2)
    return StageResult(metrics)


def _reweighter(args, cfg, enc, tokenizer, train_rows, feats, meta_feats, seed, head=None):
    if args.reweight == "domain":
        names = sorted({str(r.get("domain", "default")) for r in train_rows})
        groups = [names.index(str(train_rows[f["index"]].get("domain", "default"))) for f in feats]
    else:
        names = [str(i) for i in range(len(feats))]
        groups = list(range(len(feats)))
    for j, f in enumerate(feats):
        f["index"] = j  # the reweighter maps batch rows to groups by feature position
    rw = DreamPRMReweighter(groups, len(names), meta_feats,
                            pad_token_id=tokenizer.pad_token_id, label_mode=enc.label_mode,
                            inner_lr=cfg.learning_rate, meta_lr=args.meta_lr,
                            meta_batch_size=cfg.per_device_train_batch_size, class_weights=args.class_weights,
                            seed=seed, step_head=head)
    return rw, names


def _save_reweight(rw, names, folder, mode):
    return save_weights(rw, names, folder, mode)
