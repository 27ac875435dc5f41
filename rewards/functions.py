"""TRL reward functions: correctness (PoT, CoT), format, brevity, length shapes and the PRM bonus.

Each is a callable object with TRL's signature ``f(prompts, completions, **kwargs) ->
list[float | None]`` and a ``__name__`` (TRL logs ``rewards/<name>``). GRPOTrainer passes every
dataset column except the prompt (the gold is ``answer``), ``completion_ids`` (token ids of each
completion), ``trainer_state`` (for schedules), ``log_metric`` and ``log_extra``. Every function
works on the whole batch: one sandbox run, one PRM call. None (NaN in TRL, left out of the group
baseline) marks a completion a reward cannot judge, such as one with an unparseable gold.

Build them with ``rewards.registry.get_reward_funcs`` so that rewards scoring the same batch share
one sandbox run (an :class:`ExecMemo`). They pickle (TRL's async GRPO runs rewards in a child
process): a sandbox or a PRM loaded from a path is not carried along but opened again where the
reward is next called.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from rewards.lengths import (
    Ramp,
    completion_lengths,
    cosine_length_reward,
    dapo_overlong_penalty,
    kimi_length_rewards,
    training_progress,
)
from rewards.scoring import ExecMemo, PotScore, score_cot, score_pot
from stages.common.pot import completion_text, count_code_blocks, extract_program

logger = logging.getLogger(__name__)

Rewards = list[float | None]

# Default L_max of cosine_length: open-r1's GRPO script default (``cosine_max_len: 1000``).
COSINE_MAX_LENGTH = 1000


class RewardFunc:
    """Base of the reward functions: name, gold column lookup, correctness by mode."""

    name: ClassVar[str] = ""

    def __init__(self, *, gold_column: str = "answer") -> None:
        self.__name__ = self.name
        self.gold_column = gold_column

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Rewards:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<reward {self.__name__}>"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if "sandbox" in state:  # worker processes and pipes do not travel; get_sandbox() there
            state["sandbox"] = None
        return state

    def golds(self, kwargs: dict[str, Any], n: int) -> list[str | None]:
        """The gold answers of the batch, with an error that says what is missing."""
        if self.gold_column not in kwargs:
            columns = sorted(k for k in kwargs if k not in ("trainer_state", "log_metric", "log_extra"))
            raise KeyError(
                f"reward '{self.__name__}' needs the dataset column '{self.gold_column}' (the gold final "
                f"answer); the columns passed are {columns}"
            )
        golds = list(kwargs[self.gold_column])
        if len(golds) != n:
            raise ValueError(f"reward '{self.__name__}': {len(golds)} '{self.gold_column}' values for {n} completions")
        return golds


class _Judge:
    """Correctness of a batch, as PoT (through the sandbox, shared memo) or CoT (extraction)."""

    def __init__(self, mode: str, sandbox: Any, memo: ExecMemo | None) -> None:
        if mode not in ("pot", "cot"):
            raise ValueError(f"mode must be 'pot' or 'cot', got {mode!r}")
        self.mode, self.sandbox, self.memo = mode, sandbox, memo

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "sandbox": None}

    def __call__(self, completions: Sequence[Any], golds: Sequence[str | None]) -> list[bool | None]:
        if self.mode == "cot":
            return score_cot(completions, golds)
        return [s.correct for s in score_pot(completions, golds, self.sandbox, memo=self.memo)]


def _log(kwargs: dict[str, Any], metrics: dict[str, float], extra: dict[str, list] | None = None) -> None:
    """Report to the trainer through the ``log_metric``/``log_extra`` callbacks GRPOTrainer passes."""
    log_metric: Callable | None = kwargs.get("log_metric")
    log_extra: Callable | None = kwargs.get("log_extra")
    if log_metric is not None:
        for k, v in metrics.items():
            log_metric(k, v)
    if log_extra is not None and extra:
        for k, v in extra.items():
            log_extra(k, v)


# ---------------------------------------------------------------------------------------------
# correctness and format


class PotCorrectness(RewardFunc):
    """1.0 when the completion's program runs (sandbox, one batch) and prints the gold answer,
    else 0.0; None when the gold cannot be read (``rewards.equivalence.read_gold``). Logs the
    shares of completions without a program, with an execution error and with an unreadable
    gold, and each executed answer."""

    name = "pot_correctness"

    def __init__(self, *, sandbox: Any = None, memo: ExecMemo | None = None, gold_column: str = "answer") -> None:
        super().__init__(gold_column=gold_column)
        self.sandbox, self.memo = sandbox, memo

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Rewards:
        scores: list[PotScore] = score_pot(completions, self.golds(kwargs, len(completions)), self.sandbox,
                                           memo=self.memo)
        n = max(1, len(scores))
        _log(
            kwargs,
            {
                f"{self.__name__}/no_code": sum(s.status == "no_code" for s in scores) / n,
                f"{self.__name__}/exec_error": sum(s.status not in ("ok", "no_code") for s in scores) / n,
                f"{self.__name__}/unreadable_gold": sum(s.correct is None for s in scores) / n,
            },
            {"executed_answer": [s.answer for s in scores]},
        )
        return [None if s.correct is None else float(s.correct) for s in scores]


class CotCorrectness(RewardFunc):
    """1.0 when the final answer extracted from the text equals the gold, else 0.0; None when the
    gold cannot be read. Logs the share of completions with an unreadable gold."""

    name = "cot_correctness"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Rewards:
        correct = score_cot(completions, self.golds(kwargs, len(completions)))
        _log(kwargs, {f"{self.__name__}/unreadable_gold": sum(c is None for c in correct) / max(1, len(correct))})
        return [None if c is None else float(c) for c in correct]


def has_pot_format(completion: Any) -> bool:
    """Exactly one python block, whose program parses and calls ``print`` (a static check: the
    sandbox run belongs to the correctness reward)."""
    text = completion_text(completion)
    if count_code_blocks(text) != 1:
        return False
    program = extract_program(text)
    if program is None:
        return False
    try:
        tree = ast.parse(program)
    except SyntaxError:
        return False
    return any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
        for node in ast.walk(tree)
    )


class PotFormat(RewardFunc):
    """1.0 when the completion has exactly one python block that prints an answer, else 0.0."""

    name = "pot_format"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Rewards:
        return [float(has_pot_format(c)) for c in completions]


# ---------------------------------------------------------------------------------------------
# length


class Brevity(RewardFunc):
    """The seed's brevity penalty: ``-coef * n_tokens``. The coefficient may ramp from
    ``coef_start`` to ``coef`` over training (``schedule`` linear or cosine between the fractions
    ``ramp_begin`` and ``ramp_end`` of ``max_steps``; see :class:`rewards.lengths.Ramp`).
    ``only_correct`` charges correct completions only (0.0 for wrong ones, None for an
    unparseable gold), so that a wrong answer is not pushed to be short."""

    name = "brevity"

    def __init__(
        self,
        *,
        coef: float = 0.0002,
        coef_start: float | None = None,
        schedule: str = "constant",
        ramp_begin: float = 0.0,
        ramp_end: float = 1.0,
        only_correct: bool = False,
        mode: str = "pot",
        tokenizer: Any = None,
        sandbox: Any = None,
        memo: ExecMemo | None = None,
        gold_column: str = "answer",
    ) -> None:
        super().__init__(gold_column=gold_column)
        self.ramp = Ramp(coef if coef_start is None else coef_start, coef, schedule, ramp_begin, ramp_end)
        self.only_correct, self.tokenizer = only_correct, tokenizer
        self.judge = _Judge(mode, sandbox, memo)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Rewards:
        lengths = completion_lengths(completions, kwargs.get("completion_ids"), self.tokenizer)
        coef = self.ramp.value(training_progress(kwargs.get("trainer_state")))
        _log(kwargs, {f"{self.__name__}/coef": coef})
        if not self.only_correct:
            return [-coef * n for n in lengths]
        correct = self.judge(completions, self.golds(kwargs, len(completions)))
        return [None if ok is None else (-coef * n if ok else 0.0) for n, ok in zip(lengths, correct, strict=True)]


def _prompt_key(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, default=str)


def _all_gather(items: list) -> tuple[list, int]:
    """Items of every process (in rank order) and where this process's start, when a
    torch.distributed group is running; else the items themselves."""
    torch = sys.modules.get("torch")  # only a process that already uses torch can be distributed
    dist = getattr(torch, "distributed", None) if torch is not None else None
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return items, 0
    parts: list[list | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    offset = sum(len(p or []) for p in parts[: dist.get_rank()])
    return [x for p in parts for x in (p or [])], offset


class KimiLength(RewardFunc):
    """Kimi k1.5 group-relative length reward (formula in
    :func:`rewards.lengths.kimi_length_rewards`), times ``weight`` (which may ramp up from
    ``weight_start`` like the brevity coefficient; Kimi warms this reward up).

    Groups: GRPO repeats each prompt ``num_generations`` times, so a group is the set of
    completions with an identical prompt. A process may hold only part of a group (TRL splits the
    generation batch across processes, not groups), so when torch.distributed is running the
    lengths and correctness of all processes are gathered first (``cross_process=True``; every
    process must then call the reward, as GRPOTrainer does)."""

    name = "kimi_length"

    def __init__(
        self,
        *,
        weight: float = 1.0,
        weight_start: float | None = None,
        schedule: str = "constant",
        ramp_begin: float = 0.0,
        ramp_end: float = 1.0,
        cross_process: bool = True,
        mode: str = "pot",
        tokenizer: Any = None,
        sandbox: Any = None,
        memo: ExecMemo | None = None,
        gold_column: str = "answer",
    ) -> None:
        super().__init__(gold_column=gold_column)
        self.ramp = Ramp(weight if weight_start is None else weight_start, weight, schedule, ramp_begin, ramp_end)
        self.cross_process, self.tokenizer = cross_process, tokenizer
        self.judge = _Judge(mode, sandbox, memo)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Rewards:
        lengths = completion_lengths(completions, kwargs.get("completion_ids"), self.tokenizer)
        correct = self.judge(completions, self.golds(kwargs, len(completions)))
        local = list(zip((_prompt_key(p) for p in prompts), lengths, correct, strict=True))
        rows, offset = _all_gather(local) if self.cross_process else (local, 0)
        groups: dict[str, list[int]] = {}
        for i, (key, _, _) in enumerate(rows):
            groups.setdefault(key, []).append(i)
        rewards: list[float | None] = [None] * len(rows)
        for members in groups.values():
            values = kimi_length_rewards([rows[i][1] for i in members], [rows[i][2] for i in members])
            for i, v in zip(members, values, strict=True):
                rewards[i] = v
        weight = self.ramp.value(training_progress(kwargs.get("trainer_state")))
        return [None if r is None else weight * r for r in rewards[offset : offset + len(local)]]


class DapoOverlong(RewardFunc):
    """DAPO soft overlong punishment (formula in :func:`rewards.lengths.dapo_overlong_penalty`),
    added to the correctness reward. ``max_length`` is L_max (set it to the trainer's
    ``max_completion_length``); ``cache_length`` is L_cache, by default a fifth of L_max as in
    DAPO (4,096 of 20,480); ``cache_length: 0`` is a hard cut-off (no soft zone: 0 up to L_max,
    -1 beyond), as TRL's ``get_soft_overlong_punishment`` with ``soft_punish_cache=0``."""

    name = "dapo_overlong"

    def __init__(self, *, max_length: int, cache_length: int | None = None, tokenizer: Any = None) -> None:
        super().__init__()
        self.max_length = int(max_length)
        self.cache_length = int(cache_length) if cache_length is not None else max(1, self.max_length // 5)
        if not 0 <= self.cache_length <= self.max_length or self.max_length < 1:
            raise ValueError(f"dapo_overlong: need 0 <= cache_length <= max_length and max_length >= 1, got "
                             f"cache_length={self.cache_length}, max_length={self.max_length}")
        self.tokenizer = tokenizer

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Rewards:
        lengths = completion_lengths(completions, kwargs.get("completion_ids"), self.tokenizer)
        return [dapo_overlong_penalty(n, self.max_length, self.cache_length) for n in lengths]


class CosineLength(RewardFunc):
    """Cosine length scaling of correctness (formula in
    :func:`rewards.lengths.cosine_length_reward`); use it instead of a correctness reward.
    ``max_length`` is L_max, by default :data:`COSINE_MAX_LENGTH` (1,000 tokens, open-r1's
    ``cosine_max_len``); set it to the trainer's ``max_completion_length``."""

    name = "cosine_length"

    def __init__(
        self,
        *,
        max_length: int = COSINE_MAX_LENGTH,
        min_value_correct: float = 0.5,
        max_value_correct: float = 1.0,
        min_value_wrong: float = -1.0,
        max_value_wrong: float = -0.5,
        exceed_value: float = -1.0,
        mode: str = "pot",
        tokenizer: Any = None,
        sandbox: Any = None,
        memo: ExecMemo | None = None,
        gold_column: str = "answer",
    ) -> None:
        super().__init__(gold_column=gold_column)
        self.max_length, self.tokenizer = int(max_length), tokenizer
        if self.max_length < 1:
            raise ValueError(f"cosine_length: max_length must be >= 1, got {self.max_length}")
        self.values = dict(
            min_value_correct=min_value_correct,
            max_value_correct=max_value_correct,
            min_value_wrong=min_value_wrong,
            max_value_wrong=max_value_wrong,
            exceed_value=exceed_value,
        )
        self.judge = _Judge(mode, sandbox, memo)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Rewards:
        lengths = completion_lengths(completions, kwargs.get("completion_ids"), self.tokenizer)
        correct = self.judge(completions, self.golds(kwargs, len(completions)))
        return [
            None if ok is None else cosine_length_reward(n, ok, self.max_length, **self.values)
            for n, ok in zip(lengths, correct, strict=True)
        ]


# ---------------------------------------------------------------------------------------------
# PRM bonus

AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "min": min,
    "product": math.prod,
    "last": lambda xs: xs[-1],
    "mean": lambda xs: sum(xs) / len(xs),
}


def problem_text(prompt: Any) -> str:
    """The problem of a prompt: the last user message of a conversation, or the prompt string."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise ValueError(f"prompt has no user message: {prompt!r:.200}")
    return users[-1]


class PRMBonus(RewardFunc):
    """``weight * aggregate(step scores)`` from a process reward model: each completion's steps
    (``stages.common.steps.split_solution``, the PRM stage's split) get the probability of being
    correct, aggregated by ``min``, ``product``, ``last`` or ``mean``. With ``only_correct`` (the
    default) only completions with a correct final answer are scored and paid (0.0 otherwise,
    None for an unparseable gold), so that the policy cannot earn the bonus with plausible-looking
    wrong solutions. ``prm`` is any object with ``score(problems, solutions) -> list[list[float]]``,
    or a PRM checkpoint path together with ``scorer_factory`` (called with the path on first use,
    e.g. ``stages.prm_lib.scorer.PRMScorer``: the stage that uses the reward passes it in, so
    ``rewards`` never imports a stage). The problem is the ``question`` column when present, else
    the prompt's last user message. A completion with no steps gets 0.0."""

    name = "prm_bonus"

    def __init__(
        self,
        *,
        prm: Any,
        scorer_factory: Callable[[str], Any] | None = None,
        aggregation: str = "min",
        weight: float = 1.0,
        only_correct: bool = True,
        question_column: str = "question",
        mode: str = "pot",
        sandbox: Any = None,
        memo: ExecMemo | None = None,
        gold_column: str = "answer",
    ) -> None:
        super().__init__(gold_column=gold_column)
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"prm_bonus: aggregation must be one of {sorted(AGGREGATIONS)}, got {aggregation!r}")
        if prm is None:
            raise ValueError("prm_bonus needs prm: a PRM checkpoint path or an object with .score()")
        if isinstance(prm, str | Path) and scorer_factory is None:
            raise ValueError("prm_bonus: a PRM checkpoint path needs scorer_factory (the PRM scorer class that "
                             "loads it, e.g. stages.prm_lib.scorer.PRMScorer)")
        self._prm = prm
        self.scorer_factory = scorer_factory
        self._scorer: Any = None if isinstance(prm, str | Path) else prm
        self.aggregate = AGGREGATIONS[aggregation]
        self.aggregation, self.weight, self.only_correct = aggregation, weight, only_correct
        self.question_column = question_column
        self.judge = _Judge(mode, sandbox, memo)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if isinstance(self._prm, str | Path):
            state["_scorer"] = None  # a loaded model is reloaded from its path
        return state

    @property
    def scorer(self) -> Any:
        if self._scorer is None:
            self._scorer = self.scorer_factory(str(self._prm))
        return self._scorer

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Rewards:
        n = len(completions)
        if self.only_correct:
            correct = self.judge(completions, self.golds(kwargs, n))
        else:
            correct = [True] * n
        todo = [i for i, ok in enumerate(correct) if ok]
        rewards: list[float | None] = [None if ok is None else 0.0 for ok in correct]
        if not todo:
            return rewards
        questions = kwargs.get(self.question_column)
        problems = [questions[i] if questions is not None else problem_text(prompts[i]) for i in todo]
        solutions = [completion_text(completions[i]) for i in todo]
        step_scores = self.scorer.score(problems, solutions)
        if len(step_scores) != len(todo):
            raise ValueError(f"prm_bonus: the PRM returned {len(step_scores)} score lists for {len(todo)} solutions")
        for i, scores in zip(todo, step_scores, strict=True):
            rewards[i] = self.weight * self.aggregate(list(scores)) if len(scores) else 0.0
        return rewards
