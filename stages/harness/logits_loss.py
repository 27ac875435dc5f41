"""``SFTTrainer`` with the loss taken from the model's full logits (``lm_head_loss: logits``).

Why our own: TRL 1.16's ``SFTTrainer`` always patches the model with its fused LM head
(``trl.trainer.utils.add_fused_lm_head``), a tiled kernel that never builds the
``(batch, length, vocabulary)`` logits. That is the right trade for a 150k-token vocabulary on a
GPU, and TRL offers no switch to turn it off. On a CPU with a small vocabulary (the embedded tiny
model: 1,024 tokens, the logits of a batch are about 3 MB) its tiles cost a third of every step:
60 steps of recipes/tiny/sft.yaml's batches took 3.0 s fused against 2.0 s from the logits
(forward and backward, the same metrics; bench/README.md, Findings; bench/sft_throughput.py runs the
stage both ways). This trainer computes the same loss, normalised the same way, and logs the
same metrics (``entropy``, ``mean_token_accuracy``, ``num_tokens``); every configuration it does not
cover (another loss type, label smoothing, a custom loss, MoE auxiliary loss, sequence
parallelism's pre-shifted labels) goes to TRL's own ``compute_loss``.
"""

from __future__ import annotations

import torch
from trl import SFTTrainer


class LogitsLossSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose NLL loss and metrics come from the model's logits (see the module)."""

    def _covers(self, inputs: dict) -> bool:
        return (self.args.loss_type == "nll" and self.label_smoother is None and self.compute_loss_func is None
                and not self.aux_loss_enabled and "shift_labels" not in inputs and "labels" in inputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not self._covers(inputs):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits
        # Next-token targets; only the completion's positions (labels != -100) are scored, as in TRL's head
        targets = inputs["labels"][:, 1:].to(logits.device)
        mask = targets != -100
        scored = logits[:, :-1][mask].float()
        target_ids = targets[mask]
        loss_sum = torch.nn.functional.cross_entropy(scored, target_ids, reduction="sum")
        num_tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = loss_sum / torch.as_tensor(num_tokens).clamp(min=1)
        # As TRL: `num_items_in_batch` counts every rank's tokens and DDP averages the gradients
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())

        # The metrics TRL logs, from the same positions
        with torch.no_grad():
            log_probs = scored.log_softmax(-1)
            entropy_sum = -(log_probs.exp() * log_probs).sum()
            num_correct = (scored.argmax(-1) == target_ids).sum()
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(mask.sum()).sum()
        entropy_sum, num_correct = gather(entropy_sum).sum(), gather(num_correct).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                batch_tokens = gather(inputs["attention_mask"].sum()).sum().item()
            else:  # padding-free batches carry position_ids instead
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
                batch_tokens = gather(local).sum().item()
            self._total_train_tokens += batch_tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss
