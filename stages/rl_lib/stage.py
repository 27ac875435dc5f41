"""The reinforcement-learning stages ``grpo`` and ``length_rl``: TRL ``GRPOTrainer`` runs on PoT
prompts with gold answers that differ only in their recipe (rewards, weights, schedules, parent).

- :class:`RLStageArguments`: problem sources, rewards and their options, the PRM checkpoint;
- :func:`rl_stage`: the :class:`~stages.harness.Stage` of either (the harness runs the lifecycle:
  parent policy, before/after pass@1 per eval set, versioned and resumable checkpoints);
- :func:`resolve_prm`: the optional PRM bonus (``prm_checkpoint``, ``@prm``), scored by the PRM
  scorer class the launch module passes in (per-stage libraries do not import each other);
- :mod:`stages.rl_lib.trainer`: ``TimedGRPOTrainer`` (step-time split, zero-spread groups).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from trl import GRPOConfig, ModelConfig

from rewards.registry import get_reward_funcs
from stages.common.checkpoint import CheckpointError, resolve_parent, stage_ref
from stages.common.config import ConfigError, mapping_option
from stages.common.data import load_gold_problems
from stages.common.modeling import peft_config
from stages.common.pot import build_messages
from stages.harness import PolicyTrainingArguments, Stage, StageConfigs, StageContext, StagePlan, StageResult
from stages.harness.policy import check_golds, input_files
from stages.rl_lib.trainer import TimedGRPOTrainer

log = logging.getLogger("mathforge.rl")


@dataclass
class RLStageArguments(PolicyTrainingArguments):
    """Arguments of an RL stage besides ``GRPOConfig`` and ``ModelConfig`` (the shared policy-training
    fields come from :class:`~stages.harness.PolicyTrainingArguments`)."""

    train_data: list[str] = field(
        default_factory=lambda: ["arith:train:2000"],
        metadata={"help": "Problem sources with gold answers: arith:<split>[:n[:seed]], gsm8k:<split>[:n], or a "
                          "jsonl of Problem rows."},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["pot_correctness", "pot_format", "brevity"],
        metadata={"help": "Reward names from rewards.registry (or package.module:attr); weights go in "
                          "reward_weights (GRPOConfig), in the same order."},
    )
    reward_options: dict | str | None = field(
        default=None,
        metadata={"help": "Options per reward under its name, e.g. {brevity: {coef: 0.0002}} (JSON on the "
                          "command line)."},
    )
    prm_checkpoint: str | None = field(
        default=None,
        metadata={"help": "PRM checkpoint for the prm_bonus reward: a checkpoint folder or '@prm' (this run's "
                          "PRM stage)."},
    )
    prm_required: bool = field(
        default=True,
        metadata={"help": "With false, a prm_bonus whose '@prm' checkpoint does not exist yet is left out with a "
                          "warning (the tiny recipe); with true, that is an error."},
    )
    zero_spread_warn: float = field(
        default=0.5,
        metadata={"help": "Warn when more than this share of groups has zero spread in the primary (first) "
                          "reward: those groups give no learning signal."},
    )
    eval_max_new_tokens: int = field(default=128, metadata={"help": "Generation budget of the pass@1 eval."})
    eval_batch_size: int = field(default=100, metadata={"help": "Generation batch size of the pass@1 eval."})


# ---------------------------------------------------------------------------------------------
# inputs


def to_grpo_rows(problems: list[dict]) -> list[dict]:
    """GRPO dataset rows: the PoT chat prompt (conversational) plus the gold and the question, which
    the rewards read as columns."""
    return [{"prompt": build_messages(p["question"]), "answer": p["answer"], "question": p["question"],
             "id": p["id"]} for p in problems]


def parse_reward_options(options: dict | str | None) -> dict[str, Any]:
    options = mapping_option(options, "reward_options", "be a mapping of reward name to options") or {}
    return {k: dict(v) if isinstance(v, dict) else v for k, v in options.items()}


def resolve_prm(args: RLStageArguments, reward_funcs: list[str], reward_weights: list[float] | None,
                options: dict[str, Any], run_dir: Path,
                scorer_factory: Any = None) -> tuple[list[str], list[float] | None, str | None]:
    """Wire the PRM checkpoint into the ``prm_bonus`` options.

    Returns the reward names and weights (without ``prm_bonus`` when it is optional and its
    ``@<stage>`` checkpoint does not exist yet) and the PRM checkpoint path used (or None)."""
    if "prm_bonus" not in reward_funcs:
        return reward_funcs, reward_weights, None
    own = options.setdefault("prm_bonus", {})
    spec = args.prm_checkpoint or own.get("prm")
    if spec is None:
        raise ConfigError("reward 'prm_bonus' needs prm_checkpoint (a PRM checkpoint folder or '@prm')")
    path = stage_ref(str(spec), run_dir)
    try:
        parent = resolve_parent(path)
    except CheckpointError as e:
        if str(spec).startswith("@") and not args.prm_required:
            log.warning("prm_checkpoint %s does not exist yet (%s): training without the prm_bonus reward", spec, e)
            i = reward_funcs.index("prm_bonus")
            weights = None if reward_weights is None else reward_weights[:i] + reward_weights[i + 1:]
            options.pop("prm_bonus", None)
            return reward_funcs[:i] + reward_funcs[i + 1:], weights, None
        raise ConfigError(f"prm_checkpoint '{spec}': {e}") from e
    if scorer_factory is None:
        raise ConfigError("reward 'prm_bonus': this stage was built without a PRM scorer")
    scorer_factory.check(parent.path)  # a folder that is not a PRM checkpoint fails now, not at the first reward
    own["prm"] = parent.path
    return reward_funcs, reward_weights, parent.path


def check_rewards(names: list[str], weights: list[float] | None) -> None:
    if not names:
        raise ConfigError("reward_funcs is empty: GRPO needs at least one reward")
    if weights is not None and len(weights) != len(names):
        raise ConfigError(f"reward_weights has {len(weights)} values for {len(names)} reward_funcs {names}")


def _without_prm(options: dict[str, Any]) -> dict[str, Any]:
    """Options as JSON-able config (a PRM path stays; loaded objects never appear in recipes)."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "prm"} if k == "prm_bonus" and isinstance(v, dict) else v)
            for k, v in options.items()}


# ---------------------------------------------------------------------------------------------
# the stage


def prepare(configs: StageConfigs, *, scorer_factory: Any = None) -> StagePlan:
    """Everything read and checked before anything is written: problems with golds, rewards and
    their options (typos are errors now, not after the model is loaded), the PRM checkpoint."""
    args, cfg, model_args = configs.args, configs.training, configs.model
    if cfg.use_vllm:
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("use_vllm is true but vllm is not installed: install the [vllm] extra, or pass "
                              "--use_vllm false")
    by_source = load_gold_problems(args.train_data, seed=cfg.seed, needed_by="GRPO")
    check_golds(by_source)
    problems = [p for rows in by_source.values() for p in rows]
    if args.max_train_samples:
        problems = problems[: args.max_train_samples]
    options = parse_reward_options(args.reward_options)
    names, weights, prm_path = resolve_prm(args, list(args.reward_funcs), cfg.reward_weights, options, args.run_dir,
                                           scorer_factory)
    check_rewards(names, weights)
    cfg.reward_weights = weights
    try:
        get_reward_funcs(names, **options, scorer_factory=scorer_factory)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"rewards {names}: {e}") from e
    extra = {"rewards": {"names": names, "weights": weights, "options": _without_prm(options)},
             "prm_checkpoint": prm_path}
    details = {"train_problems": len(problems), "rewards": names, "reward_weights": weights,
               "prm_checkpoint": prm_path, "loss_type": cfg.loss_type, "beta": cfg.beta,
               "num_generations": cfg.num_generations, "use_vllm": cfg.use_vllm}
    return StagePlan(parent=model_args.model_name_or_path, inputs=input_files(args.train_data), details=details,
                     data={"problems": problems, "names": names, "options": options}, extra_config=extra,
                     seed=cfg.seed)


def build(ctx: StageContext, plan: StagePlan, *, scorer_factory: Any = None) -> StageResult:
    import datasets  # deferred: heavy

    args, cfg = ctx.args, ctx.configs.training
    names, options = plan.data["names"], plan.data["options"]
    policy = ctx.policy
    funcs = get_reward_funcs(names, **options, tokenizer=policy.tokenizer, scorer_factory=scorer_factory)
    for f in funcs:
        if hasattr(f, "scorer"):
            _ = f.scorer  # load the PRM now: set-up, not the first step's reward time
    dataset = datasets.Dataset.from_list(to_grpo_rows(plan.data["problems"]))
    trainer = TimedGRPOTrainer(
        model=policy.model, reward_funcs=funcs, args=cfg, train_dataset=dataset, processing_class=policy.tokenizer,
        peft_config=peft_config(ctx.configs.model), zero_spread_warn=args.zero_spread_warn)
    metrics: dict[str, Any] = {"train_problems": len(plan.data["problems"]), "rewards": names,
                               "reward_weights": cfg.reward_weights}
    metrics.update(ctx.train(trainer))
    metrics["step_time_split"] = trainer.timing_summary()
    history = trainer.zero_spread_history
    metrics["zero_spread"] = {"reward": names[0], "mean_share": sum(history) / len(history) if history else None,
                              "warnings": trainer.zero_spread_warnings, "threshold": args.zero_spread_warn}
    return StageResult(metrics, trainer.model)


def rl_stage(name: str, *, scorer_factory: Any = None) -> Stage:
    """The ``grpo`` or ``length_rl`` stage; ``scorer_factory`` (a PRM scorer class with
    ``check(path)``) scores the ``prm_bonus`` reward."""
    return Stage(name, (RLStageArguments, GRPOConfig, ModelConfig),
                 prepare=partial(prepare, scorer_factory=scorer_factory),
                 build=partial(build, scorer_factory=scorer_factory))
