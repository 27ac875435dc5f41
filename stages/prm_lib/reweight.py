"""DreamPRM-style instance reweighting: bilevel optimisation with a one-step look-ahead.

Each training row (``instance``) or each domain (``domain``) has a weight on its training loss.
At every training step the weights of the batch are updated so that one SGD step of the PRM on
the weighted batch lowers the loss on a separate meta set:

    theta' = theta - lr * grad_theta L_train(theta, w)
    w     <- w - meta_lr * grad_w L_meta(theta')

The meta loss is the step loss on the meta set's step labels, or, when every meta row carries an
outcome label (DreamPRM's ``meta_label``: 1.0 when the whole solution is right), the outcome loss
(``trainer.outcome_loss``: the sigmoid of the mean step log-odds against that label). The meta
set is a held-out fraction of the training rows or a file of its own (``meta_json_file``), and
each meta step draws ``meta_batch_size`` of its rows.

The look-ahead runs the model functionally (``torch.func.functional_call``) on its trainable
parameters only (the LoRA weights and head under PEFT), with ``create_graph`` so that the meta
gradient flows back through the inner step. Weights stay positive and average 1.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.prm_lib.trainer import PRMCollator, model_inputs, outcome_loss, prm_loss


class DreamPRMReweighter:
    """Learns one weight per group; ``groups[i]`` is the group of training row ``i``."""

    def __init__(self, groups: Sequence[int], n_groups: int, meta_feats: Sequence[dict], *, pad_token_id: int,
                 label_mode: str, inner_lr: float, meta_lr: float = 0.1, meta_batch_size: int = 16,
                 class_weights: Sequence[float] | None = None, seed: int = 0, step_head=None):
        import torch  # deferred: heavy import

        if not meta_feats:
            raise ValueError("DreamPRM reweighting needs a non-empty meta set")
        self.groups = torch.tensor(list(groups), dtype=torch.long)
        self.log_w = torch.zeros(n_groups)  # weight = n * softmax(log_w): positive, mean 1
        self.meta_feats = list(meta_feats)
        self.collate = PRMCollator(pad_token_id)
        self.label_mode, self.inner_lr, self.meta_lr = label_mode, inner_lr, meta_lr
        self.meta_batch_size, self.class_weights = meta_batch_size, class_weights
        self.gen = torch.Generator().manual_seed(seed)
        self.history: list[float] = []  # meta loss per step
        self.step_head = step_head  # the implicit PRM's ImplicitHead; None: the logits are step logits

    def weights(self):
        import torch  # deferred: heavy import

        return len(self.log_w) * torch.softmax(self.log_w, 0)

    def _meta_batch(self) -> dict:
        import torch  # deferred: heavy import

        idx = torch.randperm(len(self.meta_feats), generator=self.gen)[: self.meta_batch_size].tolist()
        return self.collate([self.meta_feats[i] for i in idx])

    def step(self, batch: dict, model) -> Any:
        """Update the weights on this batch and return the batch's (detached) row weights."""
        import torch  # deferred: heavy import
        from torch.func import functional_call  # deferred: heavy import

        device = batch["input_ids"].device
        model = getattr(model, "module", model)  # the DDP-wrapped model runs functionally as its module
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        log_w = self.log_w.clone().to(device).requires_grad_(True)
        rows = self.groups[batch["index"].cpu()].to(device)
        w = (len(log_w) * torch.softmax(log_w, 0))[rows]
        from torch.nn.attention import SDPBackend, sdpa_kernel  # deferred: heavy import

        # the look-ahead differentiates twice; of the SDPA kernels only the math one supports that
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            out = functional_call(model, params, (), model_inputs(batch))
            inner = prm_loss(self._step_logits(out.logits, batch), batch["labels"], self.label_mode,
                             class_weights=self.class_weights, instance_weights=w)
            grads = torch.autograd.grad(inner, list(params.values()), create_graph=True, allow_unused=True)
            ahead = {n: (p - self.inner_lr * g if g is not None else p)
                     for (n, p), g in zip(params.items(), grads, strict=True)}
            meta = {k: v.to(device) for k, v in self._meta_batch().items()}
            out_m = functional_call(model, ahead, (), model_inputs(meta))
            meta_logits = self._step_logits(out_m.logits, meta)
            if "outcome" in meta:  # a meta set with outcome labels (DreamPRM's meta_label) is judged by them
                meta_loss = outcome_loss(meta_logits, meta["labels"], meta["outcome"], self.label_mode)
            else:
                meta_loss = prm_loss(meta_logits, meta["labels"], self.label_mode, class_weights=self.class_weights)
            (hyper,) = torch.autograd.grad(meta_loss, [log_w])
        self.log_w -= self.meta_lr * hyper.detach().cpu()
        self.history.append(float(meta_loss.detach()))
        return self.weights().to(device)[rows].detach()

    def _step_logits(self, logits, batch: dict):
        return logits if self.step_head is None else self.step_head(logits, batch)

    def __call__(self, batch: dict, model) -> Any:
        return self.step(batch, model)


def save_weights(reweighter: DreamPRMReweighter, names: Sequence[str], folder, mode: str) -> dict:
    """``reweight_weights.json`` and a plot (``reweight_weights.png``) of the learned weights."""
    import matplotlib  # deferred: heavy import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: heavy import

    w = [float(x) for x in reweighter.weights()]
    obj = {"mode": mode, "weights": dict(zip(names, w, strict=True)), "meta_loss": reweighter.history}
    (Path(folder) / "reweight_weights.json").write_text(json.dumps(obj, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if mode == "domain":
        ax.bar(list(names), w)
        ax.set_ylabel("weight")
    else:
        ax.hist(w, bins=30)
        ax.set_xlabel("instance weight")
    ax.set_title(f"DreamPRM {mode} weights")
    fig.tight_layout()
    fig.savefig(Path(folder) / "reweight_weights.png", dpi=100)
    plt.close(fig)
    return {"min": min(w), "max": max(w), "n": len(w)}
