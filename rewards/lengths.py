"""Length shapes as plain formulas, the token lengths they take, and the schedule that ramps them.

The TRL reward functions in ``rewards.functions`` apply these to a batch; here they are pure so
that each formula is tested on its own. Lengths are in tokens: ``completion_ids`` from the
trainer, else a tokenizer, else (with a warning) whitespace-separated words.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stages.common.pot import completion_text

logger = logging.getLogger(__name__)
_warned_whitespace = False
_tokenizers: dict[str, Any] = {}


def completion_lengths(
    completions: Sequence[Any],
    completion_ids: Sequence[Sequence[int]] | None = None,
    tokenizer: Any = None,
) -> list[int]:
    """Length of each completion in tokens: ``len(completion_ids[i])`` when the trainer passes
    them (GRPOTrainer does), else by ``tokenizer`` (an object or a path/hub id, loaded once),
    else whitespace-separated words, with a warning, as words are not tokens."""
    if completion_ids is not None:
        if len(completion_ids) != len(completions):
            raise ValueError(f"{len(completion_ids)} completion_ids for {len(completions)} completions")
        return [len(ids) for ids in completion_ids]
    texts = [completion_text(c) for c in completions]
    if tokenizer is not None:
        if isinstance(tokenizer, str | os.PathLike):
            key = str(tokenizer)
            if key not in _tokenizers:
                from transformers import AutoTokenizer  # deferred: heavy, only when asked for

                _tokenizers[key] = AutoTokenizer.from_pretrained(key)
            tokenizer = _tokenizers[key]
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    global _warned_whitespace
    if not _warned_whitespace:
        logger.warning(
            "length rewards: no completion_ids and no tokenizer given; counting whitespace-separated "
            "words, which are not tokens (pass tokenizer=... to the reward options)"
        )
        _warned_whitespace = True
    return [len(t.split()) for t in texts]


@dataclass(frozen=True)
class Ramp:
    """A value that moves from ``start`` to ``end`` as training progresses.

    progress p = ``trainer_state.global_step / trainer_state.max_steps``; the value is ``start``
    before ``begin``, ``end`` after ``finish`` and in between follows ``schedule``: ``constant``
    (always ``end``), ``linear``, or ``cosine`` (``start + (end-start) * (1 - cos(pi r)) / 2``,
    r the fraction of the ramp done). Without a trainer state (scoring outside training) the
    value is ``end``."""

    start: float
    end: float
    schedule: str = "constant"
    begin: float = 0.0
    finish: float = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"schedule must be constant, linear or cosine, got {self.schedule!r}")
        if not 0.0 <= self.begin <= self.finish <= 1.0:
            raise ValueError(f"need 0 <= begin <= finish <= 1, got begin={self.begin} finish={self.finish}")

    def value(self, progress: float | None) -> float:
        if self.schedule == "constant" or progress is None:
            return self.end
        if progress <= self.begin:
            return self.start
        if progress >= self.finish:
            return self.end
        r = (progress - self.begin) / (self.finish - self.begin)
        if self.schedule == "cosine":
            r = (1.0 - math.cos(math.pi * r)) / 2.0
        return self.start + (self.end - self.start) * r


def training_progress(trainer_state: Any) -> float | None:
    """``global_step / max_steps`` of a transformers ``TrainerState``; None when unknown."""
    if trainer_state is None:
        return None
    max_steps = getattr(trainer_state, "max_steps", 0) or 0
    if max_steps <= 0:
        return None
    return min(1.0, max(0.0, getattr(trainer_state, "global_step", 0) / max_steps))


def kimi_length_rewards(lengths: Sequence[int], correct: Sequence[bool | None]) -> list[float | None]:
    """Kimi k1.5 length reward within one group of answers to the same problem:

    ``lambda_i = 0.5 - (len_i - min_len) / (max_len - min_len)``; reward ``lambda_i`` when answer i
    is correct, ``min(0, lambda_i)`` when wrong (a short wrong answer earns nothing), ``0`` for all
    when every answer has the same length, None where correctness is unknown."""
    lo, hi = min(lengths), max(lengths)
    out: list[float | None] = []
    for n, ok in zip(lengths, correct, strict=True):
        if ok is None:
            out.append(None)
            continue
        lam = 0.0 if hi == lo else 0.5 - (n - lo) / (hi - lo)
        out.append(lam if ok else min(0.0, lam))
    return out


def dapo_overlong_penalty(length: int, max_length: int, cache_length: int) -> float:
    """DAPO soft overlong punishment, with L_max = ``max_length`` and L_cache = ``cache_length``:

    ``0`` if ``|y| <= L_max - L_cache``; ``((L_max - L_cache) - |y|) / L_cache`` if
    ``L_max - L_cache < |y| <= L_max`` (a linear slope from 0 to -1); ``-1`` if ``|y| > L_max``.
    ``cache_length`` 0 leaves no soft zone: a hard cut-off at L_max."""
    soft = max_length - cache_length
    if length <= soft:
        return 0.0
    if length <= max_length:  # here cache_length > 0
        return (soft - length) / cache_length
    return -1.0


def cosine_length_reward(
    length: int,
    correct: bool,
    max_length: int,
    *,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    exceed_value: float = -1.0,
) -> float:
    """Cosine length scaling (Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning"):

    ``r = eta_min + (eta_max - eta_min) * (1 + cos(pi * L / L_max)) / 2``, which is ``eta_max`` at
    L = 0 and ``eta_min`` at L = L_max. Correct: eta_max = ``max_value_correct``, eta_min =
    ``min_value_correct`` (shorter is better); wrong: eta_max = ``min_value_wrong``, eta_min =
    ``max_value_wrong`` (a short wrong answer is punished most, so the model is not pushed to
    give up early). ``exceed_value`` when L >= L_max (the generation hit the limit). It replaces,
    not adds to, the correctness reward. Defaults follow open-r1's ``cosine_scaled`` reward."""
    if length >= max_length:
        return exceed_value
    cosine = math.cos(math.pi * length / max_length)
    if correct:
        lo, hi = min_value_correct, max_value_correct
    else:
        lo, hi = max_value_wrong, min_value_wrong
    return lo + 0.5 * (hi - lo) * (1.0 + cosine)
