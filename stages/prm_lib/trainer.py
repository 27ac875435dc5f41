"""PRM training on ``transformers.Trainer``: step logits at the step positions.

TRL 1.16 no longer ships a PRM trainer (``PRMTrainer`` was removed), so this module keeps TRL's
stepwise data format and builds on ``transformers.Trainer`` with its own loss: two classes
(cross-entropy), soft labels (binary cross-entropy on ``logit1 - logit0``), three classes, class
weights, per-instance weights (for DreamPRM reweighting) and train-on-last-step-only.

The model's logits are step logits in one of two layouts: ``[batch, positions, classes]`` (a token
classifier, the implicit PRM through its head, the embeddings head) or ``[batch, classes]`` (a
sequence classifier, one step prefix per row: the seed's design), which :func:`as_step_logits`
lays out as the first.

For people used to ProcessRewardTrainer (``from prm import ProcessRewardTrainer,
RewardDataCollator``): ``PRMTrainer(model=..., args=TrainingArguments(...), train_dataset=rows,
processing_class=tokenizer)`` (or ``tokenizer=tokenizer``) takes its ``{"input", "value",
"label"}`` rows (or stepwise rows) as they are, and ``save_model()`` writes a checkpoint that
``PRMScorer`` loads; the two names are aliases here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import Trainer

from stages.prm_lib.labels import input_value_label_row
from stages.prm_lib.model import IGNORE, EncodingConfig, completion_start, encode_solution, step_target


def featurize(rows: Sequence[dict], tokenizer, cfg: EncodingConfig, *, last_step_only: bool = False,
              label_key: str = "labels", hard_threshold: float = 0.5, neutral_as: bool = True) -> list[dict]:
    """Stepwise rows as ``{"input_ids", "labels", "weight", "index"}`` features: one target per
    step at its prediction token, IGNORE elsewhere. Rows whose steps do not fit are cut; a row
    with no step left is dropped. A sequence classifier (``prm_type: sequence_classification``)
    gets one feature per step prefix, whose one label is that step's. A row's ``meta_label`` (the
    outcome label of the whole solution) travels as ``outcome``."""
    feats = []
    cache: dict = {}
    per_prefix = cfg.prm_type == "sequence_classification"
    for index, row in enumerate(rows):
        ids, positions = encode_solution(tokenizer, row["prompt"], list(row["completions"]), cfg, cache=cache)
        if not positions:
            continue
        targets = row[label_key]
        chosen = [len(positions) - 1] if last_step_only else range(len(positions))
        start = completion_start(tokenizer, row["prompt"], cfg, cache)
        common = {"weight": float(row.get("weight", 1.0)), "index": index, "completion_start": start}
        if row.get("meta_label") is not None:
            common["outcome"] = float(row["meta_label"])
        if per_prefix:
            for j in chosen:
                feats.append({"input_ids": ids[: positions[j] + 1], **common, "labels": [
                    step_target(targets[j], cfg.label_mode, hard_threshold=hard_threshold, neutral_as=neutral_as)]})
            continue
        labels = [IGNORE] * len(ids)
        for j in chosen:
            labels[positions[j]] = step_target(targets[j], cfg.label_mode, hard_threshold=hard_threshold,
                                               neutral_as=neutral_as)
        feats.append({"input_ids": ids, "labels": labels, **common})
    return feats


class PRMCollator:
    """Right-pads ids (pad token) or step embeddings (zeros), the attention mask (0) and labels
    (IGNORE). Takes the pad token id or a tokenizer (ProcessRewardTrainer's ``RewardDataCollator(tokenizer)``)."""

    def __init__(self, pad_token_id: Any = 0):
        if not isinstance(pad_token_id, int) and pad_token_id is not None:
            pad_token_id = getattr(pad_token_id, "pad_token_id", None)
            if pad_token_id is None:
                pad_token_id = 0
        self.pad = pad_token_id or 0

    def __call__(self, feats: Sequence[dict]) -> dict[str, Any]:

        n = len(feats)
        embeds = "inputs_embeds" in feats[0]
        key = "inputs_embeds" if embeds else "input_ids"
        width = max(len(f[key]) for f in feats)
        label_width = max(len(f["labels"]) for f in feats)
        mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, label_width), IGNORE, dtype=torch.float)
        if embeds:
            first = torch.as_tensor(feats[0]["inputs_embeds"])
            values = torch.zeros((n, width, first.shape[-1]), dtype=first.dtype)
        else:
            values = torch.full((n, width), self.pad, dtype=torch.long)
        for i, f in enumerate(feats):
            k = len(f[key])
            values[i, :k] = torch.as_tensor(f[key], dtype=values.dtype)
            mask[i, :k] = 1
            labels[i, : len(f["labels"])] = torch.tensor(f["labels"], dtype=torch.float)
        out = {key: values, "attention_mask": mask, "labels": labels,
               "weight": torch.tensor([f.get("weight", 1.0) for f in feats], dtype=torch.float),
               "index": torch.tensor([f.get("index", 0) for f in feats], dtype=torch.long),
               "completion_start": torch.tensor([f.get("completion_start", 0) for f in feats], dtype=torch.long)}
        if all("outcome" in f for f in feats):
            out["outcome"] = torch.tensor([f["outcome"] for f in feats], dtype=torch.float)
        return out


def model_inputs(batch: dict) -> dict:
    """What the PRM model's forward takes from a collated batch: token ids or step embeddings, and the mask."""
    key = "inputs_embeds" if "inputs_embeds" in batch else "input_ids"
    return {key: batch[key], "attention_mask": batch["attention_mask"]}


def as_step_logits(logits):
    """Step logits as ``[batch, steps, classes]``: a sequence classifier's ``[batch, classes]``
    (one step prefix per row) becomes one step per row."""
    return logits[:, None, :] if logits.dim() == 2 else logits


def prm_loss(logits, labels, mode: str, *, class_weights: Sequence[float] | None = None, instance_weights=None):
    """Mean step loss over labelled positions; ``instance_weights`` (one per row) scale each
    row's steps (DreamPRM's weights enter the training loss here)."""

    logits = as_step_logits(logits)
    mask = labels != IGNORE
    y = torch.where(mask, labels, torch.zeros_like(labels))
    cw = torch.tensor(class_weights, dtype=logits.dtype, device=logits.device) if class_weights else None
    if mode == "soft":
        z = logits[..., 1] - logits[..., 0]
        per = torch.nn.functional.binary_cross_entropy_with_logits(z.float(), y, reduction="none")
        if cw is not None:
            per = per * (y * cw[1] + (1 - y) * cw[0])
    else:
        flat = logits.float().reshape(-1, logits.shape[-1])
        per = torch.nn.functional.cross_entropy(flat, y.long().reshape(-1), weight=cw.float() if cw is not None else None,
                              reduction="none").reshape(y.shape)
    if instance_weights is not None:
        per = per * instance_weights.to(per.dtype)[:, None]
    per = per * mask
    return per.sum() / mask.sum().clamp(min=1)


def step_log_odds(logits, mode: str):
    """log P(step correct) - log P(step wrong) from step logits (three classes: a neutral step is
    not wrong, as in :func:`stages.prm_lib.model.step_probabilities`)."""
    logits = as_step_logits(logits).float()
    if mode == "three":
        return torch.logsumexp(logits[..., 1:], -1) - logits[..., 0]
    return logits[..., 1] - logits[..., 0]


def outcome_loss(logits, labels, outcome, mode: str):
    """The loss of whole solutions against their outcome labels (DreamPRM's ``meta_label``): a
    solution's score is the sigmoid of the mean log-odds of its labelled steps, compared with the
    outcome by binary cross-entropy. Sequence-classifier rows are step prefixes: each is judged
    by its solution's outcome."""
    z = step_log_odds(logits, mode)
    mask = (labels != IGNORE).float()
    mean = (z * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    rows = mask.sum(-1) > 0
    if not bool(rows.any()):
        return torch.zeros((), device=z.device)
    return torch.nn.functional.binary_cross_entropy_with_logits(mean[rows], outcome.to(mean.dtype)[rows])


def _raw_rows(dataset: Any) -> list[dict] | None:
    """``dataset`` as stepwise rows when it holds ProcessRewardTrainer or stepwise rows (not features)."""
    if dataset is None or isinstance(dataset, dict):
        return None
    try:
        first = dataset[0]
    except (IndexError, KeyError, TypeError):
        return None
    if not isinstance(first, dict) or "input_ids" in first or "inputs_embeds" in first:
        return None
    if {"input", "value", "label"} <= set(first):
        return [input_value_label_row(dict(r), "train_dataset", i + 1) for i, r in enumerate(dataset)]
    if {"prompt", "completions", "labels"} <= set(first):
        return [dict(r) for r in dataset]
    return None


class PRMTrainer(Trainer):
    """``Trainer`` with the PRM loss; the batch carries ``labels``, ``weight``, ``index`` and
    ``completion_start``. ``step_head``: turns the model's raw logits into step logits (the
    implicit PRM's ``ImplicitHead``); None for a token or sequence classifier, whose logits
    already are.

    ``train_dataset`` / ``eval_dataset`` may hold features (:func:`featurize`) or rows:
    ProcessRewardTrainer's ``{"input", "value", "label"}`` or stepwise ``{"prompt", "completions",
    "labels"}``; rows are featurized with ``processing_class`` (``tokenizer=`` is accepted too) and
    ``encoding`` (default: :class:`EncodingConfig` with ``label_mode``; a sequence classifier
    model gets ``prm_type: sequence_classification``). The collator defaults to
    :class:`PRMCollator`. ``save_model`` also writes ``prm_config.json``, so
    ``PRMScorer(output_dir)`` scores with the same encoding."""

    def __init__(self, *args: Any, label_mode: str = "hard", class_weights: Sequence[float] | None = None,
                 instance_weight_fn=None, step_head=None, encoding: EncodingConfig | None = None, **kwargs: Any):
        if "tokenizer" in kwargs:  # the argument's name before transformers 5 (ProcessRewardTrainer's examples)
            kwargs.setdefault("processing_class", kwargs.pop("tokenizer"))
        model = kwargs.get("model", args[0] if args else None)
        if encoding is None:
            kind = "sequence_classification" if "ForSequenceClassification" in type(model).__name__ else \
                "token_classification"
            encoding = EncodingConfig(label_mode=label_mode, prm_type=kind)
        self.encoding = encoding
        tokenizer = kwargs.get("processing_class")
        for name in ("train_dataset", "eval_dataset"):
            rows = _raw_rows(kwargs.get(name))
            if rows is not None:
                if tokenizer is None:
                    raise ValueError(f"PRMTrainer: {name} holds rows; pass processing_class=tokenizer to encode them")
                kwargs[name] = featurize(rows, tokenizer, encoding)
        if kwargs.get("data_collator") is None:
            pad = getattr(tokenizer, "pad_token_id", None)
            if pad is None:
                pad = getattr(getattr(model, "config", None), "pad_token_id", None)
            kwargs["data_collator"] = PRMCollator(pad or 0)
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if training_args is not None:
            training_args.remove_unused_columns = False  # the collator needs weight, index, completion_start
        if model is not None and getattr(getattr(model, "config", None), "pad_token_id", None) is None \
                and getattr(tokenizer, "pad_token_id", None) is not None:
            model.config.pad_token_id = tokenizer.pad_token_id  # a sequence classifier finds each row's end by it
        super().__init__(*args, **kwargs)
        self.step_head = step_head
        self.label_mode = encoding.label_mode
        self.class_weights = list(class_weights) if class_weights else None
        # DreamPRM: called with (batch, model) at every step, returns the per-row weights to use
        self.instance_weight_fn = instance_weight_fn

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        weight = inputs.pop("weight", None)
        index = inputs.pop("index", None)
        inputs.pop("outcome", None)
        if self.instance_weight_fn is not None:
            weight = self.instance_weight_fn({**inputs, "labels": labels, "weight": weight, "index": index}, model)
        outputs = model(**model_inputs(inputs))
        logits = outputs.logits if self.step_head is None else self.step_head(outputs.logits, inputs)
        loss = prm_loss(logits, labels, self.label_mode, class_weights=self.class_weights,
                        instance_weights=weight)
        return (loss, outputs) if return_outputs else loss

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.encoding.save(output_dir or self.args.output_dir)


# ProcessRewardTrainer's names, for its users
ProcessRewardTrainer = PRMTrainer
RewardDataCollator = PRMCollator
