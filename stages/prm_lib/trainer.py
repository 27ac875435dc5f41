"""PRM training on ``transformers.Trainer``: token classification at the step positions.

TRL 1.16 no longer ships a PRM trainer (``PRMTrainer`` was removed), so this module keeps TRL's
stepwise data format and builds on ``transformers.Trainer`` with its own loss: two classes
(cross-entropy), soft labels (binary cross-entropy on ``logit1 - logit0``), three classes, class
weights, per-instance weights (for DreamPRM reweighting) and train-on-last-step-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import Trainer

from stages.prm_lib.model import IGNORE, EncodingConfig, completion_start, encode_solution, step_target


def featurize(rows: Sequence[dict], tokenizer, cfg: EncodingConfig, *, last_step_only: bool = False,
              label_key: str = "labels", hard_threshold: float = 0.5, neutral_as: bool = True) -> list[dict]:
    """Stepwise rows as ``{"input_ids", "labels", "weight", "index"}`` features: one target per
    step at its prediction token, IGNORE elsewhere. Rows whose steps do not fit are cut; a row
    with no step left is dropped."""
    feats = []
    cache: dict = {}
    for index, row in enumerate(rows):
        ids, positions = encode_solution(tokenizer, row["prompt"], list(row["completions"]), cfg, cache=cache)
        if not positions:
            continue
        labels = [IGNORE] * len(ids)
        targets = row[label_key]
        chosen = [len(positions) - 1] if last_step_only else range(len(positions))
        for j in chosen:
            labels[positions[j]] = step_target(targets[j], cfg.label_mode, hard_threshold=hard_threshold,
                                               neutral_as=neutral_as)
        feats.append({"input_ids": ids, "labels": labels, "weight": float(row.get("weight", 1.0)), "index": index,
                      "completion_start": completion_start(tokenizer, row["prompt"], cfg, cache)})
    return feats


class PRMCollator:
    """Right-pads ids (pad token), attention mask (0) and labels (IGNORE)."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, feats: Sequence[dict]) -> dict[str, Any]:

        width = max(len(f["input_ids"]) for f in feats)
        n = len(feats)
        ids = torch.full((n, width), self.pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.float)
        for i, f in enumerate(feats):
            k = len(f["input_ids"])
            ids[i, :k] = torch.tensor(f["input_ids"], dtype=torch.long)
            mask[i, :k] = 1
            labels[i, :k] = torch.tensor(f["labels"], dtype=torch.float)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "weight": torch.tensor([f.get("weight", 1.0) for f in feats], dtype=torch.float),
                "index": torch.tensor([f.get("index", 0) for f in feats], dtype=torch.long),
                "completion_start": torch.tensor([f.get("completion_start", 0) for f in feats], dtype=torch.long)}


def prm_loss(logits, labels, mode: str, *, class_weights: Sequence[float] | None = None, instance_weights=None):
    """Mean step loss over labelled positions; ``instance_weights`` (one per row) scale each
    row's steps (DreamPRM's weights enter the training loss here)."""

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


class PRMTrainer(Trainer):
    """``Trainer`` with the PRM loss; the batch carries ``labels``, ``weight``, ``index`` and
    ``completion_start``. ``step_head``: turns the model's raw logits into step logits (the
    implicit PRM's ``ImplicitHead``); None for a token classifier, whose logits already are."""

    def __init__(self, *args: Any, label_mode: str = "hard", class_weights: Sequence[float] | None = None,
                 instance_weight_fn=None, step_head=None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.step_head = step_head
        self.label_mode = label_mode
        self.class_weights = list(class_weights) if class_weights else None
        # DreamPRM: called with (batch, model) at every step, returns the per-row weights to use
        self.instance_weight_fn = instance_weight_fn

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        weight = inputs.pop("weight", None)
        index = inputs.pop("index", None)
        if self.instance_weight_fn is not None:
            weight = self.instance_weight_fn({**inputs, "labels": labels, "weight": weight, "index": index}, model)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits = outputs.logits if self.step_head is None else self.step_head(outputs.logits, inputs)
        loss = prm_loss(logits, labels, self.label_mode, class_weights=self.class_weights,
                        instance_weights=weight)
        return (loss, outputs) if return_outputs else loss
