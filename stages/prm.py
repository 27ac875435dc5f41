"""PRM stage: step labels, a token-classification process reward model, reweighting, evaluation.

Launch: ``accelerate launch --config_file accelerate_configs/cpu.yaml -m stages.prm --config
recipes/tiny/prm.yaml`` (or ``python -m stages.prm ...``). Steps:

1. step labels (``label_source``): ``mc`` (Math-Shepherd rollouts by the policy), ``judge`` (an
   LLM judge, optionally with the HE / SE transforms, the policy or the judge generating) or
   ``import`` (PRM800K, Math-Shepherd, ``pi`` scores, text/label rows, stepwise jsonl); the
   policy's problems are ordered by mistake mining;
2. training: token classification at the step positions (``stages.prm_lib.trainer``), two
   classes, three classes or soft labels, LoRA (TOKEN_CLS), class weights, last step only; or
   ``prm_type: implicit``, a causal LM scored by its log-likelihood ratio to a frozen reference
   (``stages.prm_lib.implicit``; LoRA CAUSAL_LM);
   ``reweight: dreamprm`` learns instance or domain weights on a meta set
   (``stages.prm_lib.reweight``), ``--baseline`` switches that off;
3. evaluation into metrics.json: step metrics, ProcessBench first-error F1, best-of-N.

Scoring for people: ``python -m stages.prm score IN.jsonl -o OUT.jsonl [--checkpoint DIR]``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stages.common.stage import StageArguments, StageContext, cli, setup_logging
from stages.prm_lib.scorer import PRMScorer

__all__ = ["PRMScorer", "PRMStageArguments", "main"]

log = logging.getLogger("mathforge.prm")


@dataclass
class PRMStageArguments(StageArguments):
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


def main(argv: list[str] | None = None) -> Path | None:
    from transformers import TrainingArguments  # noqa: PLC0415
    from trl import ModelConfig  # noqa: PLC0415

    from stages.common.config import ConfigError, parse_config  # noqa: PLC0415
    from stages.common.data import load_problems  # noqa: PLC0415
    from stages.prm_lib import pipeline as P  # noqa: PLC0415

    args, cfg, model_args = parse_config((PRMStageArguments, TrainingArguments, ModelConfig), argv, prog="stages.prm")
    setup_logging()
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
        enc = P.encoding_config(args)  # validates label_mode, prm_type, implicit_beta
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if args.class_weights and len(args.class_weights) != enc.num_labels:
        raise ConfigError(f"class_weights needs {enc.num_labels} values for label_mode {args.label_mode}")
    label_map = P.parse_label_map(args.import_label_map)
    imported = P.imported_rows(args.import_files, args.import_format, prm800k_mode=args.prm800k_mode,
                               label_map=label_map) if args.label_source == "import" else []
    if args.label_source == "import" and not imported:
        raise ConfigError("label_source import needs import_files with at least one row")
    label_problems = load_problems(args.label_problems, seed=cfg.seed) if args.label_source != "import" else []
    bon = [] if args.bon_problems.lower() == "none" else load_problems(args.bon_problems, seed=cfg.seed)
    needs_policy = args.label_source == "mc" or (args.label_source == "judge" and not args.judge_generates) or bon
    inputs = [f for f in args.import_files if Path(f).is_file()]
    ctx = StageContext("prm", args, (args, cfg, model_args), parent=model_args.model_name_or_path, inputs=inputs,
                       seed=cfg.seed)
    if ctx.done:
        ctx.report_skip()
        return ctx.ckpt.final_dir
    if args.dry_run:
        ctx.print_plan(label_source=args.label_source, label_problems=len(label_problems), imported_rows=len(imported),
                       prm_type=args.prm_type, label_mode=args.label_mode, reweight="off" if args.baseline else args.reweight,
                       best_of_n_problems=len(bon), policy=args.policy if needs_policy else None)
        return None
    from stages.prm_lib.run import run_stage  # noqa: PLC0415

    return run_stage(ctx, args, cfg, model_args, enc, imported, label_problems, bon, needs_policy=bool(needs_policy))


def score_main(argv: list[str]) -> int:
    """``python -m stages.prm score IN.jsonl -o OUT.jsonl [--checkpoint DIR] [--batch_size N]``: adds
    ``step_scores`` (and their min, product and last) to rows with ``question`` (or ``prompt``) and
    ``completion``."""
    import argparse  # noqa: PLC0415
    import math  # noqa: PLC0415

    from stages.common.data import DataFormatError, iter_jsonl, write_jsonl  # noqa: PLC0415

    ap = argparse.ArgumentParser(prog="python -m stages.prm score", description=score_main.__doc__)
    ap.add_argument("input")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--checkpoint", default="runs/default/prm", help="PRM checkpoint (stage folder or vN)")
    ap.add_argument("--batch_size", type=int, default=16)
    a = ap.parse_args(argv)
    rows = []
    for lineno, row in iter_jsonl(a.input):
        q = row.get("question", row.get("prompt")) if isinstance(row, dict) else None
        if not isinstance(q, str):
            raise DataFormatError(a.input, lineno, "question", "is missing (or prompt) or not a string")
        if not isinstance(row.get("completion"), str):
            raise DataFormatError(a.input, lineno, "completion", "is missing or not a string")
        rows.append(row)
    scorer = PRMScorer(a.checkpoint, batch_size=a.batch_size)
    scores = scorer.score([r.get("question", r.get("prompt")) for r in rows], [r["completion"] for r in rows])
    out = [{**r, "step_scores": s, "prm_min": min(s) if s else None, "prm_product": math.prod(s) if s else None,
            "prm_last": s[-1] if s else None} for r, s in zip(rows, scores, strict=True)]
    write_jsonl(a.output, out)
    print(f"scored {len(out)} solutions -> {a.output}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "score":
        sys.exit(score_main(sys.argv[2:]))
    cli(main, "stages.prm")
