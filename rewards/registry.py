"""Reward names for recipes: ``get_reward_funcs(names, **options)`` builds TRL reward functions.

A recipe names its rewards and their options in YAML, for example::

    reward_funcs: [pot_correctness, brevity, prm_bonus]
    reward_weights: [1.0, 1.0, 1.0]          # GRPOConfig.reward_weights
    reward_options:
      brevity: {coef: 0.0002}
      prm_bonus: {prm: runs/x/prm/latest, aggregation: min, weight: 0.5}

and the stage calls ``get_reward_funcs(names, **reward_options, sandbox=..., tokenizer=...,
scorer_factory=...)`` (the PRM scorer class, which ``rewards`` does not import).
A keyword named like a listed reward holds that reward's own options; any other keyword is a
shared option given to every listed reward that takes it (``sandbox``, ``tokenizer``, ``mode``,
``gold_column``, ``memo`` may always be passed). Any other option that no listed reward takes is
an error (a typo in a recipe), as is an unknown reward. A name ``package.module:attr`` imports a user's reward (a function, or a class built
with its options). The rewards built by one call share one :class:`~rewards.scoring.ExecMemo`,
so the batch is run in the sandbox once per step whatever the number of PoT-based rewards.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from rewards.functions import (
    Brevity,
    CosineLength,
    CotCorrectness,
    DapoOverlong,
    KimiLength,
    PotCorrectness,
    PotFormat,
    PRMBonus,
    RewardFunc,
)
from rewards.scoring import ExecMemo

REWARDS: dict[str, type[RewardFunc]] = {
    cls.name: cls
    for cls in (PotCorrectness, CotCorrectness, PotFormat, Brevity, KimiLength, DapoOverlong, CosineLength, PRMBonus)
}
REWARDS["format"] = PotFormat  # the name for it

# Options a stage may pass whatever rewards a recipe lists; they are not errors when unused.
SHARED_OPTIONS = frozenset({"sandbox", "tokenizer", "mode", "gold_column", "memo", "scorer_factory"})


def _resolve(name: str) -> Any:
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"reward '{name}': cannot import {attr} from {module}: {e}") from e
    raise ValueError(f"unknown reward '{name}'; known: {sorted(REWARDS)} (or package.module:function)")


def _parameters(factory: Any) -> set[str]:
    params = inspect.signature(factory).parameters
    return {p for p, v in params.items() if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)}


def get_reward_funcs(names: Sequence[str], **options: Any) -> list[Callable[..., list[float | None]]]:
    """TRL reward functions for ``names``, in order, each with ``__name__`` set to its name."""
    names = list(names)
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"rewards listed twice: {sorted(duplicates)} (TRL logs each reward by name)")
    own = {n: options.pop(n) for n in names if n in options}
    for n, opts in own.items():
        if not isinstance(opts, dict):
            raise TypeError(f"options of reward '{n}' must be a mapping, got {type(opts).__name__}")
    shared = dict(options)
    shared.setdefault("memo", ExecMemo())
    used: set[str] = {"memo"}
    funcs = []
    for name in names:
        factory = _resolve(name)
        kwargs = dict(own.get(name, {}))
        if inspect.isclass(factory):
            params = _parameters(factory)
            unknown = set(kwargs) - params
            if unknown:
                raise TypeError(f"reward '{name}' has no option(s) {sorted(unknown)}; it takes {sorted(params)}")
            for k, v in shared.items():
                if k in params and k not in kwargs:
                    kwargs[k] = v
                    used.add(k)
            func = factory(**kwargs)
            func.__name__ = name
        else:
            if kwargs:
                raise TypeError(f"reward '{name}' is a function and takes no options, got {sorted(kwargs)}")
            func = factory
        funcs.append(func)
    unused = set(shared) - used - SHARED_OPTIONS
    if unused:
        raise TypeError(f"option(s) {sorted(unused)} are taken by none of the rewards {names} "
                        f"(options of one reward go under its name, e.g. brevity={{'coef': 0.0002}})")
    return funcs
