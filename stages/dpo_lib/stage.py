"""The dpo stage: TRL ``DPOTrainer`` on preference pairs toward concise, clean programs.

- :class:`DPOStageArguments`: the pair sources, the policy sampling, how pairs are built and mixed;
- :func:`prepare`: reads every source and builds its pairs (stripping checked in the sandbox) before
  anything is loaded or written; no pair at all, with nothing to sample, is an error naming the
  sources;
- :func:`build`: samples the policy (``sample_problems``) and pairs its solutions, mixes the pairs,
  writes them (``pairs.jsonl``) and trains with ``DPOTrainer`` against the frozen parent (a copy
  of it; the adapter-disabled model with LoRA; none kept with ``precompute_ref_log_probs``).

The harness runs the lifecycle: the parent policy (``@latest_policy``), greedy pass@1 and mean
completion tokens on each eval set before and after, the versioned, resumable checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from stages.common.checkpoint import CheckpointError, resolve_parent, stage_ref
from stages.common.config import ConfigError, list_option, mapping_option
from stages.common.data import DataFormatError, load_problems, read_jsonl
from stages.common.modeling import TINY, load_tokenizer, peft_config
from stages.common.pot import build_messages
from stages.dpo_lib.pairs import (
    KINDS,
    Drops,
    PairOptions,
    build_pairs,
    limit_per_problem,
    mix,
)
from stages.dpo_lib.sources import read_sources
from stages.dpo_lib.strip import FEATURES
from stages.harness import PolicyTrainingArguments, StageConfigs, StageContext, StagePlan, StageResult
from stages.harness.policy import input_files, sample_solutions

log = logging.getLogger("mathforge.dpo")

DEFAULT_MIX = {"strip": 1.0, "sampled": 1.0, "correct_vs_wrong": 0.0, "revised": 1.0}
SAMPLES_FILE = "samples.jsonl"


@dataclass
class DPOStageArguments(PolicyTrainingArguments):
    """Arguments of the dpo stage besides ``DPOConfig`` and ``ModelConfig``."""

    train_data: list[str] = field(default_factory=lambda: ["@synth"], metadata={
        "help": "Pair sources: checkpoint folders ('@synth', '@evolve', '@revise': their pairs.jsonl, verified.jsonl, "
                "discarded.jsonl) or jsonl files (pair rows with chosen/rejected, or Verified solutions); 'none' for "
                "the policy's own samples only (sample_problems)."})
    sources_required: bool = field(default=True, metadata={
        "help": "With false, an '@<stage>' source whose stage has no checkpoint in this run yet is left out with a "
                "warning (a recipe that reads @revise when revise may not have run); with true, that is an error."})
    sample_problems: list[str] = field(default_factory=list, metadata={
        "help": "Problem sources to sample the policy on (arith:..., gsm8k:..., a jsonl of Problems): its correct "
                "samples give strip and sampled pairs, its wrong ones correct_vs_wrong pairs. Empty or 'none': no "
                "sampling."})
    samples_per_problem: int = field(default=4, metadata={"help": "Samples per problem."})
    sample_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    sample_top_p: float = field(default=1.0, metadata={"help": "Sampling top-p."})
    sample_max_new_tokens: int = field(default=160, metadata={"help": "Generation budget of a sample."})
    sample_batch_size: int = field(default=64, metadata={"help": "Generation batch size (prompts)."})
    pair_mix: dict | str | None = field(default=None, metadata={
        "help": "Weight of each pair kind: strip, sampled, correct_vs_wrong, revised (and 'file' for pair files "
                "without a kind); 0 leaves a kind out, a share below 1 keeps that share of its pairs, above 1 repeats "
                "them. Default: {strip: 1, sampled: 1, correct_vs_wrong: 0, revised: 1}. JSON on the command line."})
    strip_features: list[str] = field(default_factory=lambda: list(FEATURES), metadata={
        "help": f"What strip pairs remove: any of {', '.join(FEATURES)}."})
    strip_min_saving: float = field(default=0.1, metadata={
        "help": "A strip pair needs the stripped program shorter by at least this share of the original's tokens."})
    sampled_min_ratio: float = field(default=1.2, metadata={
        "help": "A sampled pair needs the longest correct solution to have this many times the shortest's tokens."})
    max_pairs_per_problem: int = field(default=2, metadata={"help": "At most this many pairs of a kind per problem."})


# ---------------------------------------------------------------------------------------------
# options


def parse_mix(value: dict | str | None) -> dict[str, float]:
    value = mapping_option(value, "pair_mix", "map pair kinds to weights")
    if value is None:
        return dict(DEFAULT_MIX)
    unknown = sorted(set(value) - set(KINDS))
    if unknown:
        raise ConfigError(f"pair_mix: unknown pair kind(s) {unknown}; known: {', '.join(KINDS)}")
    out = dict(DEFAULT_MIX)
    for kind, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ConfigError(f"pair_mix: the weight of '{kind}' must be a number >= 0, got {weight!r}")
        out[kind] = float(weight)
    if not any(out.values()):
        raise ConfigError("pair_mix: every weight is 0, so no pair would be used")
    return out


def pair_options(args: DPOStageArguments, seed: int) -> PairOptions:
    unknown = sorted(set(args.strip_features) - set(FEATURES))
    if unknown:
        raise ConfigError(f"strip_features: unknown feature(s) {unknown}; known: {', '.join(FEATURES)}")
    if not 0.0 <= args.strip_min_saving < 1.0:
        raise ConfigError(f"strip_min_saving must be in [0, 1), got {args.strip_min_saving}")
    if args.sampled_min_ratio < 1.0:
        raise ConfigError(f"sampled_min_ratio must be >= 1, got {args.sampled_min_ratio}")
    if args.max_pairs_per_problem < 1:
        raise ConfigError(f"max_pairs_per_problem must be >= 1, got {args.max_pairs_per_problem}")
    if args.sample_problems and args.samples_per_problem < 1:
        raise ConfigError(f"samples_per_problem must be >= 1, got {args.samples_per_problem}")
    return PairOptions(mix=parse_mix(args.pair_mix), strip_features=tuple(args.strip_features),
                       strip_min_saving=args.strip_min_saving, sampled_min_ratio=args.sampled_min_ratio,
                       max_pairs_per_problem=args.max_pairs_per_problem, max_pairs=args.max_train_samples, seed=seed)


class TokenCounter:
    """Completion lengths in the policy's tokens (as the eval counts them)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, texts) -> list[int]:
        texts = list(texts)
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _parent_tokenizer(spec: str, run_dir) -> Any:
    """The parent policy's tokenizer, read before the model loads (the pairs are built first)."""
    if spec == TINY:
        raise ConfigError("model_name_or_path 'tiny' is the untrained embedded model: dpo needs a trained policy "
                          "(@latest_policy, @sft, a checkpoint or a model folder)")
    parent = resolve_parent(stage_ref(spec, run_dir))
    try:
        return load_tokenizer(parent.path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"model_name_or_path '{spec}': cannot read its tokenizer ({e}); dpo needs a trained "
                              "policy as its parent") from e


def no_pairs_error(sources: list[str], sample_problems: list[str], drops: Drops) -> DataFormatError:
    what = ", ".join(sources) or "(no train_data)"
    sampled = f" and the policy's samples of {', '.join(sample_problems)}" if sample_problems else ""
    dropped = json.dumps(drops.to_json()) if drops.counts else "nothing"
    return DataFormatError(what, None, None, f"gives no preference pair{sampled} (dropped: {dropped}); give a source "
                           "with correct verbose solutions, a pairs.jsonl, or sample_problems")


# ---------------------------------------------------------------------------------------------
# the stage


def prepare(configs: StageConfigs) -> StagePlan:
    """Read every source and build its pairs now (the sandbox checks every stripped program), so
    that bad data, and no pair at all with nothing to sample, fail before the model loads."""
    args, cfg, model_args = configs.args, configs.training, configs.model
    args.sample_problems = list_option(args.sample_problems)  # before pair_options, which checks it
    options = pair_options(args, cfg.seed)
    t0 = time.perf_counter()
    data = read_sources(args.train_data, args.run_dir, required=args.sources_required)
    for src in args.sample_problems:  # read and checked now; sampled in build
        load_problems(src, seed=cfg.seed)
    if not data.solutions and not data.pairs and not args.sample_problems:
        raise no_pairs_error(args.train_data, [], Drops())
    count_tokens = TokenCounter(_parent_tokenizer(model_args.model_name_or_path, args.run_dir))
    drops = Drops()
    pairs = build_pairs(data.solutions, data.pairs, count_tokens, options, drops,
                        source_of=lambda s: s["pair_source"])
    build_s = time.perf_counter() - t0
    if not pairs and not args.sample_problems:
        raise no_pairs_error(args.train_data, [], drops)
    counts = _kind_counts(pairs)
    details = {"source_files": data.files, "sources_left_out": data.skipped, "solutions_read": len(data.solutions),
               "pair_rows_read": len(data.pairs), "pairs_from_sources": counts, "dropped": drops.to_json(),
               "sample_problems": args.sample_problems, "pair_mix": options.mix, "loss_type": cfg.loss_type,
               "beta": cfg.beta, "precompute_ref_log_probs": cfg.precompute_ref_log_probs}
    inputs = list(dict.fromkeys([*data.files, *input_files(args.sample_problems)]))
    return StagePlan(parent=model_args.model_name_or_path, inputs=inputs, details=details,
                     data={"pairs": pairs, "drops": drops, "options": options, "pair_build_s": build_s},
                     extra_config={"pair_mix": options.mix}, seed=cfg.seed)


def _kind_counts(pairs: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p["kind"]] = counts.get(p["kind"], 0) + 1
    return dict(sorted(counts.items()))


def _samples(ctx: StageContext) -> tuple[list[dict], float]:
    """The policy's samples of ``sample_problems``, scored in the sandbox; kept in the build's
    folder so that a resumed build pairs the same samples without sampling again."""
    args, seed = ctx.args, ctx.configs.training.seed
    path = ctx.ckpt.partial_dir / SAMPLES_FILE
    if path.is_file():
        log.info("resuming: reading the policy's samples from %s", path)
        return read_jsonl(path), 0.0
    problems = [p for src in args.sample_problems for p in load_problems(src, seed=seed)]
    t0 = time.perf_counter()
    rows = sample_solutions(ctx.policy, problems, n=args.samples_per_problem, temperature=args.sample_temperature,
                            top_p=args.sample_top_p, max_new_tokens=args.sample_max_new_tokens,
                            batch_size=args.sample_batch_size, seed=seed, progress=ctx.is_main)
    wall = time.perf_counter() - t0
    ctx.write_jsonl(SAMPLES_FILE, [{**r, "source": "policy"} for r in rows])
    return rows, wall


def to_preference(pair: dict) -> dict:
    """A pair as TRL's conversational preference example (the PoT chat prompt; loss on the
    completions)."""
    return {"prompt": build_messages(pair["question"]),
            "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}]}


def reference_model(model: Any, training: Any, model_args: Any) -> Any:
    """The frozen reference: a copy of the parent, except with LoRA (TRL disables the adapter)
    and with ``precompute_ref_log_probs`` (TRL scores the pairs with the parent before training
    and keeps no reference). An explicit copy, because a policy loaded from an adapter checkpoint
    was merged and TRL would otherwise reload the adapter's base model from its config's path."""
    if getattr(model_args, "use_peft", False) or training.precompute_ref_log_probs:
        return None
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def build(ctx: StageContext, plan: StagePlan) -> StageResult:
    import datasets  # deferred: heavy
    from trl import DPOTrainer  # deferred: heavy

    args, cfg = ctx.args, ctx.configs.training
    options: PairOptions = plan.data["options"]
    drops: Drops = plan.data["drops"]
    pairs = list(plan.data["pairs"])
    policy = ctx.policy
    count_tokens = TokenCounter(policy.tokenizer)
    metrics: dict[str, Any] = {}
    build_s = plan.data["pair_build_s"]
    if args.sample_problems:
        samples, metrics["sample_s"] = _samples(ctx)
        t0 = time.perf_counter()
        pairs += build_pairs(samples, [], count_tokens, options, drops, source_of=lambda s: "policy samples")
        build_s += time.perf_counter() - t0
        metrics["samples"] = {"rows": len(samples), "correct": sum(r["correct"] is True for r in samples),
                              "mean_tokens": sum(r["n_tokens"] for r in samples) / len(samples) if samples else 0.0}
    t0 = time.perf_counter()
    available = limit_per_problem(pairs, options.max_pairs_per_problem, drops, options.seed)
    train = mix(available, options, drops)
    build_s += time.perf_counter() - t0
    if not train:
        raise no_pairs_error(args.train_data, args.sample_problems, drops)
    ctx.write_jsonl("pairs.jsonl", train)
    metrics["pairs"] = {"available": _kind_counts(available), "trained": _kind_counts(train), "total": len(train),
                        "mean_chosen_tokens": sum(p["chosen_tokens"] for p in train) / len(train),
                        "mean_rejected_tokens": sum(p["rejected_tokens"] for p in train) / len(train),
                        "dropped": drops.to_json()}
    metrics["pair_build_s"] = round(build_s, 3)
    log.info("%d pairs (%s); dropped %s", len(train), metrics["pairs"]["trained"], drops.to_json())

    dataset = datasets.Dataset.from_list([to_preference(p) for p in train])
    trainer = DPOTrainer(model=policy.model, ref_model=reference_model(policy.model, cfg, ctx.configs.model),
                         args=cfg, train_dataset=dataset, processing_class=policy.tokenizer,
                         peft_config=peft_config(ctx.configs.model))
    metrics.update(ctx.train(trainer))
    metrics["dpo"] = final_dpo_metrics(trainer.state.log_history)
    policy.tokenizer.padding_side = "left"
    return StageResult(metrics, trainer.model)


DPO_LOG_KEYS = ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "logps/chosen",
                "logps/rejected")


def final_dpo_metrics(log_history: list[dict]) -> dict[str, Any]:
    """TRL's reward margins and accuracies (and log-probs) at the first and the last logging step."""
    logged = [row for row in log_history if "rewards/margins" in row]
    if not logged:
        return {}
    return {"first": {k: logged[0].get(k) for k in DPO_LOG_KEYS}, "last": {k: logged[-1].get(k) for k in DPO_LOG_KEYS},
            "logged_steps": len(logged)}
