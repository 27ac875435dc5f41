"""The PRM's input encoding and label spaces, shared by training and scoring.

A solution is scored in one forward pass of an ``AutoModelForTokenClassification`` (or, with
``prm_type: implicit``, of a causal LM and its reference: ``stages.prm_lib.implicit``; with
``prm_type: sequence_classification``, the seed's design, one pass of an
``AutoModelForSequenceClassification`` per step prefix; with ``prm_type: embeddings``, a frozen
sentence encoder and a small head: ``stages.prm_lib.embeddings``): the input is
the problem prompt followed by every step, each step followed by the step separator, and the
prediction for a step is read at the last token of ``step + separator``. Training and scoring both
encode through :func:`encode_solution` (steps from ``stages.common.steps.split_solution``), so
the two cannot drift apart (the best-known PRM bug). The encoding settings travel with the
checkpoint in ``prm_config.json``.

Label modes:
- ``hard``: two classes (0 wrong, 1 correct), cross-entropy;
- ``soft``: two logits, binary cross-entropy of ``logit1 - logit0`` on a soft target in [0, 1];
- ``three``: negative / neutral / positive, cross-entropy; a step's score is 1 - P(negative)
  (PRM800K's convention: a neutral step does not make the solution wrong).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stages.common.generation import chat_prompts
from stages.common.modeling import model_kwargs

PRM_CONFIG = "prm_config.json"
ENCODER_DIR = "encoder"  # an embeddings PRM's frozen encoder (stages.prm_lib.embeddings)
LABEL_MODES = ("hard", "soft", "three")
PRM_TYPES = ("token_classification", "implicit", "sequence_classification", "embeddings")
CLASS_NAMES = ("negative", "neutral", "positive")
BINARY_CLASS_NAMES = ("wrong", "correct")
IGNORE = -100.0


@dataclass
class EncodingConfig:
    """What must be identical at training and scoring time."""

    label_mode: str = "hard"
    step_separator: str = "\n"
    chat_template: bool = True  # the PoT chat prompt when the tokenizer has a chat template
    max_length: int = 1024
    prm_type: str = "token_classification"  # or implicit, sequence_classification, embeddings
    implicit_beta: float = 1.0  # implicit: q = beta * summed log-ratio

    def __post_init__(self) -> None:
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {self.label_mode!r}")
        if self.prm_type not in PRM_TYPES:
            raise ValueError(f"prm_type must be one of {PRM_TYPES}, got {self.prm_type!r}")
        if self.prm_type == "implicit" and self.label_mode == "three":
            raise ValueError("prm_type implicit scores one logit per step: label_mode hard or soft, not three")
        if self.implicit_beta <= 0:
            raise ValueError(f"implicit_beta must be > 0, got {self.implicit_beta}")

    @property
    def num_labels(self) -> int:
        return 3 if self.label_mode == "three" else 2

    @property
    def class_names(self) -> tuple[str, ...]:
        """The names of the model's classes, in logit order."""
        return CLASS_NAMES if self.label_mode == "three" else BINARY_CLASS_NAMES

    def save(self, folder: str | Path) -> None:
        (Path(folder) / PRM_CONFIG).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> EncodingConfig:
        path = Path(folder) / PRM_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; not a PRM checkpoint written by stages.prm")
        return cls(**json.loads(path.read_text()))


def prompt_text(tokenizer, question: str, cfg: EncodingConfig) -> str:
    if cfg.chat_template and getattr(tokenizer, "chat_template", None):
        return chat_prompts(tokenizer, [question])[0] + "```python\n"
    return question + "\n"


def encode_solution(tokenizer, question: str, steps: list[str], cfg: EncodingConfig,
                    *, truncate: bool = True, cache: dict | None = None) -> tuple[list[int], list[int]]:
    """(input ids, position of each step's prediction token). Each piece is tokenised on its own
    so that step boundaries are exact; steps that do not fit in ``max_length`` are dropped when
    ``truncate`` (training), kept otherwise (scoring, where every step needs a score).

    ``cache``: a dict the caller keeps for one tokenizer and config; the prompt and each step
    piece are tokenised once (the samples of a GRPO group share their prompt and most steps)."""
    chat = cfg.chat_template and getattr(tokenizer, "chat_template", None)
    cache = {} if cache is None else cache
    if ("prompt", question) not in cache:
        ids = list(tokenizer(prompt_text(tokenizer, question, cfg), add_special_tokens=not chat)["input_ids"])
        if not chat and tokenizer.sep_token_id is not None and ids and ids[-1] == tokenizer.sep_token_id:
            ids = ids[:-1]  # an encoder's [SEP] ends the whole input, not the prompt
        cache["prompt", question] = ids
    ids = list(cache["prompt", question])
    positions: list[int] = []
    for step in steps:
        if ("step", step) not in cache:
            cache["step", step] = _step_piece(tokenizer, step, cfg)
        piece = cache["step", step]
        if truncate and len(ids) + len(piece) > cfg.max_length:
            break
        ids += piece
        positions.append(len(ids) - 1)
    return ids, positions


def completion_start(tokenizer, question: str, cfg: EncodingConfig, cache: dict | None = None) -> int:
    """Index of the first step token in :func:`encode_solution`'s ids (the prompt's length)."""
    return len(encode_solution(tokenizer, question, [], cfg, cache=cache)[0])


def _step_piece(tokenizer, step: str, cfg: EncodingConfig) -> list[int]:
    piece = tokenizer(step + cfg.step_separator, add_special_tokens=False)["input_ids"]
    if not piece:
        piece = tokenizer(cfg.step_separator or " ", add_special_tokens=False)["input_ids"] or [tokenizer.unk_token_id]
    return piece


def step_target(label: Any, mode: str, *, hard_threshold: float = 0.5, neutral_as: bool = True) -> float:
    """A stepwise label (bool, soft value, class name) as the training target of ``mode``."""
    if isinstance(label, str):
        if label not in CLASS_NAMES:
            raise ValueError(f"unknown class label {label!r}")
        if mode == "three":
            return float(CLASS_NAMES.index(label))
        value = {"negative": 0.0, "neutral": 1.0 if neutral_as else 0.0, "positive": 1.0}[label]
        return value
    value = float(label)
    if mode == "three":
        return 2.0 if value >= hard_threshold else 0.0
    if mode == "hard":
        return 1.0 if value >= hard_threshold else 0.0
    return value


def step_probabilities(logits, mode: str):
    """P(step is correct) from the token-classification logits at the step positions."""
    probs = logits.float().softmax(-1)
    if mode == "three":
        return 1.0 - probs[..., 0]
    return probs[..., 1]


def class_index(label: Any, mode: str, *, hard_threshold: float = 0.5) -> int:
    """A stepwise label as the index of its class in ``EncodingConfig.class_names`` (soft labels
    by ``hard_threshold``)."""
    if mode == "three":
        return int(step_target(label, "three", hard_threshold=hard_threshold))
    return int(step_target(label, "hard", hard_threshold=hard_threshold))


def load_token_classifier(path: str, num_labels: int, model_args: Any = None):
    """Any ``AutoModelForTokenClassification`` backbone (a causal LM checkpoint gets a new head)."""
    from transformers import AutoModelForTokenClassification  # deferred: heavy import

    kwargs = model_kwargs(model_args) if model_args is not None else {}
    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=num_labels, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None) or 0
    return model


def load_sequence_classifier(path: str, num_labels: int, model_args: Any = None, *, pad_token_id: int | None = None):
    """Any ``AutoModelForSequenceClassification`` backbone (the seed's PRM: a causal LM checkpoint
    gets a new 2-label head that reads the last token of each step prefix). ``pad_token_id``: the
    tokenizer's, by which the model finds each right-padded row's last token."""
    from transformers import AutoModelForSequenceClassification  # deferred: heavy import

    kwargs = model_kwargs(model_args) if model_args is not None else {}
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kwargs)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    elif model.config.pad_token_id is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None) or 0
    return model


def prefix_sequences(ids: list[int], positions: list[int]) -> list[list[int]]:
    """The sequence classifier's inputs for one solution: the prompt and steps up to each step's
    last token (:func:`encode_solution`'s ids and positions), one sequence per step."""
    return [ids[: p + 1] for p in positions]
