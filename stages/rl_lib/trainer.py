"""``TimedGRPOTrainer``: TRL's ``GRPOTrainer`` that also logs the step-time split (generation,
rewards, optimisation) and, per reward, the share of groups whose rewards have zero spread, with a
warning when most groups of the primary reward do (TRL logs neither). It generates with the
attention kernel ``stages.common.generation.generation_attention`` picks (SDPA for a model that
trains with eager)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from trl import GRPOTrainer

from stages.common.generation import generation_attention

log = logging.getLogger("mathforge.rl")


def zero_spread_shares(rewards_per_func, num_generations: int) -> list[float]:
    """Per reward column, the share of groups (``num_generations`` consecutive rows) whose
    rewards have zero spread; groups where the reward is None (NaN) everywhere are left out
    (NaN when no group is left)."""
    grouped = rewards_per_func.view(-1, num_generations, rewards_per_func.shape[1])
    valid = ~torch.isnan(grouped)
    big = torch.finfo(grouped.dtype).max
    hi = torch.where(valid, grouped, torch.full_like(grouped, -big)).amax(dim=1)
    lo = torch.where(valid, grouped, torch.full_like(grouped, big)).amin(dim=1)
    has_any = valid.any(dim=1)
    zero = torch.isclose(hi, lo) & has_any
    n = has_any.sum(dim=0)
    return [float(z) / float(c) if c else math.nan for z, c in zip(zero.sum(dim=0).tolist(), n.tolist(), strict=True)]


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
            with generation_attention(self.model):  # eager trains faster here, SDPA generates faster
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
