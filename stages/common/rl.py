"""The reinforcement-learning machinery shared by the ``grpo`` and ``length_rl`` stages.

Both stages are TRL ``GRPOTrainer`` runs on PoT prompts with gold answers; they differ only in
their recipe (rewards, weights, schedules, parent). This module holds:

- :class:`RLStageArguments`: the stage's own arguments (problem sources, rewards and their
  options, the PRM checkpoint, the before/after pass@1 evaluation);
- :func:`load_rl_problems` / :func:`to_grpo_rows`: problems with their gold answers (a problem
  without a gold is an error naming file and line, before anything trains);
- :func:`resolve_prm`: the optional PRM bonus (``prm_checkpoint``, ``@prm`` by default);
- :class:`TimedGRPOTrainer`: ``GRPOTrainer`` that also logs the step-time split (generation,
  rewards, optimisation) and, per reward, the share of groups whose rewards have zero spread,
  with a warning when most groups of the primary reward do;
- :func:`run_rl_stage`: the whole stage (parse, validate, dry run, train, evaluate, finalize).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.common.checkpoint import CheckpointError, resolve_parent, stage_ref
from stages.common.config import ConfigError
from stages.common.data import DataFormatError, load_problems, source_file
from stages.common.pot import build_messages
from stages.common.stage import StageArguments, StageContext, setup_logging

log = logging.getLogger("mathforge.rl")

# Stages whose checkpoints hold a policy, newest in pipeline order first (``@latest_policy``).
POLICY_STAGES = ("dpo", "revise", "evolve", "grpo", "sft")
LATEST_POLICY = "@latest_policy"


@dataclass
class RLStageArguments(StageArguments):
    """Arguments of an RL stage besides ``GRPOConfig`` and ``ModelConfig``."""

    train_data: list[str] = field(
        default_factory=lambda: ["arith:train:2000"],
        metadata={"help": "Problem sources with gold answers: arith:<split>[:n[:seed]], gsm8k:<split>[:n], or a "
                          "jsonl of Problem rows."},
    )
    eval_data: list[str] = field(
        default_factory=lambda: ["arith:test:500"],
        metadata={"help": "Problem sources for the before/after pass@1 (same decoding as SFT's eval); 'none' to "
                          "skip."},
    )
    eval_max_new_tokens: int = field(default=128, metadata={"help": "Generation budget of the pass@1 eval."})
    eval_batch_size: int = field(default=100, metadata={"help": "Generation batch size of the pass@1 eval."})
    eval_before: bool = field(default=True, metadata={"help": "Also measure the parent's pass@1 before training."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many problems."})
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
    export_merged: bool = field(default=False, metadata={"help": "With LoRA, also save merged full weights."})


# ---------------------------------------------------------------------------------------------
# inputs


def resolve_policy(spec: str, run_dir: Path) -> str:
    """``@latest_policy``: the newest policy checkpoint of this run (dpo, revise, evolve, grpo, sft,
    in that order of preference); any other spec is returned as it is."""
    if spec != LATEST_POLICY:
        return spec
    for stage in POLICY_STAGES:
        folder = run_dir / stage
        if not folder.is_dir():
            continue
        try:
            parent = resolve_parent(str(folder))
        except CheckpointError:
            continue
        if (Path(parent.path) / "config.json").exists() or (Path(parent.path) / "adapter_config.json").exists():
            return str(folder)
    raise CheckpointError(f"{LATEST_POLICY}: run '{run_dir}' has no complete policy checkpoint (looked for "
                          f"{', '.join(POLICY_STAGES)})")


def load_rl_problems(sources: list[str], *, seed: int) -> list[dict]:
    """Problems of every source; one without a gold answer is an error naming its file and line."""
    problems: list[dict] = []
    for src in sources:
        rows = load_problems(src, seed=seed)
        for lineno, row in enumerate(rows, start=1):
            gold = row.get("answer")
            if not isinstance(gold, str) or not gold.strip():
                # load_problems validates jsonl rows already; this guards the other sources too
                raise DataFormatError(src, lineno, "answer", "problem has no gold answer; GRPO needs one")
        problems += rows
    if not problems:
        raise DataFormatError(",".join(sources), None, None, "holds no problem to train on")
    return problems


def to_grpo_rows(problems: list[dict]) -> list[dict]:
    """GRPO dataset rows: the PoT chat prompt (conversational) plus the gold and the question, which
    the rewards read as columns."""
    return [{"prompt": build_messages(p["question"]), "answer": p["answer"], "question": p["question"],
             "id": p["id"]} for p in problems]


def parse_reward_options(options: dict | str | None) -> dict[str, Any]:
    if options is None or options == "":
        return {}
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError as e:
            raise ConfigError(f"reward_options: not valid JSON: {e}") from e
    if not isinstance(options, dict):
        raise ConfigError(f"reward_options must be a mapping of reward name to options, got {type(options).__name__}")
    return {k: dict(v) if isinstance(v, dict) else v for k, v in options.items()}


def resolve_prm(args: RLStageArguments, reward_funcs: list[str], reward_weights: list[float] | None,
                options: dict[str, Any], run_dir: Path) -> tuple[list[str], list[float] | None, str | None]:
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
    try:
        from stages.prm import PRMScorer  # noqa: F401, PLC0415 - fail before training, not at the first reward
    except ImportError as e:
        raise ConfigError(f"prm_bonus needs stages.prm.PRMScorer, which cannot be imported: {e}") from e
    own["prm"] = parent.path
    return reward_funcs, reward_weights, parent.path


def check_rewards(names: list[str], weights: list[float] | None) -> None:
    if not names:
        raise ConfigError("reward_funcs is empty: GRPO needs at least one reward")
    if weights is not None and len(weights) != len(names):
        raise ConfigError(f"reward_weights has {len(weights)} values for {len(names)} reward_funcs {names}")


# ---------------------------------------------------------------------------------------------
# trainer


def zero_spread_shares(rewards_per_func, num_generations: int) -> list[float]:
    """Per reward column, the share of groups (``num_generations`` consecutive rows) whose
    rewards have zero spread; groups where the reward is None (NaN) everywhere are left out
    (NaN when no group is left)."""
    import torch  # noqa: PLC0415

    grouped = rewards_per_func.view(-1, num_generations, rewards_per_func.shape[1])
    valid = ~torch.isnan(grouped)
    big = torch.finfo(grouped.dtype).max
    hi = torch.where(valid, grouped, torch.full_like(grouped, -big)).amax(dim=1)
    lo = torch.where(valid, grouped, torch.full_like(grouped, big)).amin(dim=1)
    has_any = valid.any(dim=1)
    zero = torch.isclose(hi, lo) & has_any
    n = has_any.sum(dim=0)
    return [float(z) / float(c) if c else math.nan for z, c in zip(zero.sum(dim=0).tolist(), n.tolist(), strict=True)]


def _timed_grpo_trainer_class():
    from trl import GRPOTrainer  # noqa: PLC0415

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer that logs ``time/generation_s``, ``time/rewards_s``, ``time/optimisation_s``
        (the rest of the step: reference/old log-probs, forward, backward, optimiser) and
        ``time/rewards_share`` per optimiser step, and ``groups/zero_spread/<reward>`` per
        generation batch, warning when most groups of the primary reward have zero spread."""

        def __init__(self, *args: Any, zero_spread_warn: float = 0.5, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.zero_spread_warn = zero_spread_warn
            self.timing = {"generation_s": 0.0, "rewards_s": 0.0, "step_s": 0.0}
            self.zero_spread_history: list[float] = []
            self.zero_spread_warnings = 0
            self._pending = {"generation_s": 0.0, "rewards_s": 0.0, "step_s": 0.0}

        def _generate(self, prompts: list):
            t0 = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                self._pending["generation_s"] += time.perf_counter() - t0

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            t0 = time.perf_counter()
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._pending["rewards_s"] += time.perf_counter() - t0
            mode = "train" if self.model.training else "eval"
            n = self.num_generations if mode == "train" else self.num_generations_eval
            if n and n > 1 and rewards_per_func.shape[0] % n == 0:
                shares = zero_spread_shares(rewards_per_func.detach().float().cpu(), n)
                for name, share in zip(self.reward_func_names, shares, strict=True):
                    self._metrics[mode][f"groups/zero_spread/{name}"].append(share)
                primary = shares[0]
                if mode == "train" and not math.isnan(primary):
                    self.zero_spread_history.append(primary)
                    if primary > self.zero_spread_warn:
                        self.zero_spread_warnings += 1
                        if self.zero_spread_warnings in (1, 10) or self.zero_spread_warnings % 50 == 0:
                            log.warning(
                                "%.0f%% of groups have zero spread in reward '%s' (step %d, warning %d): they give "
                                "no learning signal; the problems are too easy or too hard for the policy, or "
                                "num_generations (%d) is too small", 100 * primary, self.reward_func_names[0],
                                self.state.global_step, self.zero_spread_warnings, n)
            return rewards_per_func

        def training_step(self, model, inputs, num_items_in_batch):
            t0 = time.perf_counter()
            out = super().training_step(model, inputs, num_items_in_batch)
            self._pending["step_s"] += time.perf_counter() - t0
            if self._step % self.current_gradient_accumulation_steps == 0:
                p = self._pending
                opt = max(0.0, p["step_s"] - p["generation_s"] - p["rewards_s"])
                m = self._metrics["train"]
                m["time/generation_s"].append(p["generation_s"])
                m["time/rewards_s"].append(p["rewards_s"])
                m["time/optimisation_s"].append(opt)
                m["time/rewards_share"].append(p["rewards_s"] / p["step_s"] if p["step_s"] else 0.0)
                for k in self.timing:
                    self.timing[k] += p[k]
                self._pending = {k: 0.0 for k in p}
            return out

        def timing_summary(self) -> dict[str, float]:
            t = self.timing
            total = t["step_s"] or 1.0
            opt = max(0.0, t["step_s"] - t["generation_s"] - t["rewards_s"])
            return {"step_s": t["step_s"], "generation_s": t["generation_s"], "rewards_s": t["rewards_s"],
                    "optimisation_s": opt, "generation_share": t["generation_s"] / total,
                    "rewards_share": t["rewards_s"] / total, "optimisation_share": opt / total}

    return TimedGRPOTrainer


def __getattr__(name: str) -> Any:
    # ``TimedGRPOTrainer`` is built lazily: importing TRL takes seconds, the stages' --help should not
    if name == "TimedGRPOTrainer":
        return _timed_grpo_trainer_class()
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------
# the stage


def run_rl_stage(stage: str, argv: list[str] | None = None) -> Path | None:
    """Parse the recipe, validate everything, then train (or print the plan with --dry_run)."""
    from trl import GRPOConfig, ModelConfig  # noqa: PLC0415

    from stages.common.config import parse_config  # noqa: PLC0415

    args, cfg, model_args = parse_config((RLStageArguments, GRPOConfig, ModelConfig), argv, prog=f"stages.{stage}")
    setup_logging()
    if not model_args.model_name_or_path:
        raise ConfigError("model_name_or_path is required (@sft, @latest_policy, a checkpoint, a folder or a hub id)")
    run_dir = Path(args.runs_dir) / args.run
    model_args.model_name_or_path = resolve_policy(model_args.model_name_or_path, run_dir)
    if cfg.use_vllm:
        import importlib.util  # noqa: PLC0415

        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("use_vllm is true but vllm is not installed: install the [vllm] extra, or pass "
                              "--use_vllm false")
    # everything is read and checked before anything is written
    args.train_data = [stage_ref(s, run_dir) for s in args.train_data]
    args.eval_data = [stage_ref(s, run_dir) for s in args.eval_data if s.lower() != "none"]
    problems = load_rl_problems(args.train_data, seed=cfg.seed)
    if args.max_train_samples:
        problems = problems[: args.max_train_samples]
    eval_problems = [p for src in args.eval_data for p in load_problems(src, seed=cfg.seed)]
    options = parse_reward_options(args.reward_options)
    names, weights, prm_path = resolve_prm(args, list(args.reward_funcs), cfg.reward_weights, options, run_dir)
    check_rewards(names, weights)
    cfg.reward_weights = weights
    from rewards.registry import get_reward_funcs  # noqa: PLC0415

    try:  # option typos are errors now, not after the model is loaded
        get_reward_funcs(names, **options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"rewards {names}: {e}") from e
    inputs = [str(f) for p in args.train_data + args.eval_data if (f := source_file(p)) is not None]
    extra = {"rewards": {"names": names, "weights": weights, "options": _without_prm(options)},
             "prm_checkpoint": prm_path}
    ctx = StageContext(stage, args, (args, cfg, model_args), parent=model_args.model_name_or_path, inputs=inputs,
                       seed=cfg.seed, extra_config=extra)
    if ctx.done:
        ctx.report_skip()
        return ctx.ckpt.final_dir
    if args.dry_run:
        ctx.print_plan(train_problems=len(problems), eval_problems=len(eval_problems), rewards=names,
                       reward_weights=weights, prm_checkpoint=prm_path, loss_type=cfg.loss_type, beta=cfg.beta,
                       num_generations=cfg.num_generations, use_vllm=cfg.use_vllm, use_peft=model_args.use_peft)
        return None
    return train(ctx, args, cfg, model_args, problems, eval_problems, names, options)


def _without_prm(options: dict[str, Any]) -> dict[str, Any]:
    """Options as JSON-able config (a PRM path stays; loaded objects never appear in recipes)."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "prm"} if k == "prm_bonus" and isinstance(v, dict) else v)
            for k, v in options.items()}


def train(ctx: StageContext, args: RLStageArguments, cfg, model_args, problems: list[dict],
          eval_problems: list[dict], names: list[str], options: dict[str, Any]) -> Path:
    import datasets  # noqa: PLC0415

    from rewards.registry import get_reward_funcs  # noqa: PLC0415
    from stages.common.modeling import load_causal_lm, load_tokenizer, peft_config, save_policy  # noqa: PLC0415

    cfg.output_dir = str(ctx.trainer_dir)
    cfg.run_name = ctx.run_name
    cfg.logging_dir = str(ctx.trainer_dir / "logs")
    tokenizer = load_tokenizer(ctx.parent.path, padding_side="left")
    model = load_causal_lm(ctx.parent.path, model_args)
    metrics: dict[str, Any] = {"train_problems": len(problems), "rewards": names,
                               "reward_weights": cfg.reward_weights}
    resume = ctx.resume_checkpoint()
    if eval_problems and args.eval_before:
        before, _ = _evaluate(model, tokenizer, eval_problems, args)
        metrics["eval_before"] = before
        log.info("parent pass@1: %.1f%% (mean %.1f completion tokens)", 100 * before["pass@1"],
                 before["mean_completion_tokens"])
    funcs = get_reward_funcs(names, **options, tokenizer=tokenizer)
    for f in funcs:
        if hasattr(f, "scorer"):
            _ = f.scorer  # load the PRM now: set-up, not the first step's reward time
    dataset = datasets.Dataset.from_list(to_grpo_rows(problems))
    trainer = _timed_grpo_trainer_class()(
        model=model, reward_funcs=funcs, args=cfg, train_dataset=dataset, processing_class=tokenizer,
        peft_config=peft_config(model_args), zero_spread_warn=args.zero_spread_warn)
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    metrics["train_wall_s"] = time.perf_counter() - t0
    metrics["train"] = dict(result.metrics)
    metrics["step_time_split"] = trainer.timing_summary()
    history = trainer.zero_spread_history
    metrics["zero_spread"] = {"reward": names[0], "mean_share": sum(history) / len(history) if history else None,
                              "warnings": trainer.zero_spread_warnings, "threshold": args.zero_spread_warn}
    model = trainer.model
    if ctx.is_main:
        save_policy(model, tokenizer, ctx.work_dir, args.export_merged)
    if eval_problems:
        after, details = _evaluate(model, tokenizer, eval_problems, args)
        metrics["eval"] = after
        ctx.write_jsonl("eval_details.jsonl", details)
        if "eval_before" in metrics:
            b = metrics["eval_before"]
            metrics["eval_delta"] = {
                "pass@1": after["pass@1"] - b["pass@1"],
                "mean_completion_tokens": after["mean_completion_tokens"] - b["mean_completion_tokens"],
                "mean_completion_tokens_ratio": (after["mean_completion_tokens"] / b["mean_completion_tokens"]
                                                 if b["mean_completion_tokens"] else None),
            }
        if ctx.is_main:
            log.info("pass@1 after %s: %.1f%% (mean %.1f completion tokens)", ctx.stage, 100 * after["pass@1"],
                     after["mean_completion_tokens"])
    ctx.write_json("log_history.json", trainer.state.log_history)
    return ctx.finalize(metrics)


def _evaluate(model, tokenizer, problems: list[dict], args: RLStageArguments) -> tuple[dict, list[dict]]:
    from stages.common.generation import evaluate_pot  # noqa: PLC0415

    t0 = time.perf_counter()
    metrics, details = evaluate_pot(model, tokenizer, problems, max_new_tokens=args.eval_max_new_tokens,
                                    batch_size=args.eval_batch_size)
    metrics["wall_s"] = time.perf_counter() - t0
    return metrics, details
