"""Implicit PRM: step scores from a causal LM's token log-likelihood ratio to a frozen reference.

Yuan et al. (2024), "Free Process Rewards without Process Labels" (the PRM of PRIME): the PRM is a
causal LM ``pi`` initialised from the policy, next to a frozen reference ``pi_ref`` (by default
the same starting checkpoint). Step ``k``'s logit is the Q-value

    q_k = beta * sum over the completion's tokens up to the end of step k of log pi(y_t) - log pi_ref(y_t)

so one forward pass of each model scores every step, and a step's score does not depend on later
steps. The logits are returned in the token-classification layout (``[0, q]`` at every position),
so the stage's loss (``trainer.prm_loss``: cross-entropy on hard labels, BCE on soft ones), step
probabilities (``sigmoid(q)``), DreamPRM reweighting and scorer are shared with the token-
classification PRM. At initialisation every q is 0 (every step 0.5).

Why this exists next to the token-classification head: that head reads a step at its last token,
and to see that a step copied the wrong number it must first recompute what the policy would have
written and then compare, which the 2-layer tiny policy cannot do in its two layers; on the tiny
recipe it never beat a random best-of-8 pick (docs/prm.md). The implicit PRM scores the tokens
themselves through the LM head, where the policy's knowledge of the right token already is.
TRL 1.16 has no PRM trainer of either kind.
"""

from __future__ import annotations

import inspect
from typing import Any

REFERENCE_DIR = "reference"  # the frozen reference model inside an implicit PRM checkpoint


def token_logps(lm_logits, input_ids):
    """``out[:, t]`` = log p(token t | tokens < t); ``out[:, 0]`` = 0."""
    import torch  # deferred: heavy import

    lp = torch.log_softmax(lm_logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None])[..., 0]
    return torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)


def _takes(model, *names: str) -> bool:
    params = inspect.signature(model.forward).parameters
    return all(n in params for n in names)


def supports_prompt_sharing(*models) -> bool:
    """Whether :func:`shared_prompt_logps` can run these models (a key/value cache and
    ``logits_to_keep``, as transformers' causal LMs have)."""
    return all(_takes(m, "past_key_values", "logits_to_keep", "position_ids") for m in models)


def completion_logps(model, input_ids, attention_mask, completion_start):
    """:func:`token_logps` of ``model`` from the earliest completion start on (zeros before it). The
    LM head runs only on the positions needed (``logits_to_keep``, which transformers' causal LMs
    take): about half of a scored sequence is prompt, and the head is a quarter of the tiny
    model's cost."""
    import torch  # deferred: heavy import

    width = input_ids.shape[1]
    first = max(1, min(int(completion_start.min()), width - 1))
    if not _takes(model, "logits_to_keep"):
        return token_logps(model(input_ids=input_ids, attention_mask=attention_mask).logits, input_ids)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=width - first + 1).logits
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, first:, None])[..., 0]
    return torch.cat([torch.zeros((lp.shape[0], first), dtype=lp.dtype, device=lp.device), lp], dim=1)


def shared_prompt_logps(model, prompts: list[list[int]], completions: list[list[int]], group: list[int],
                        pad_id: int):
    """``out[i, j]`` = log p(completion token j) of the sequence ``prompts[group[i]] + completions[i]``
    (right-padded, ``[N, longest completion]``), each distinct prompt run once: the prompts go
    through the model left-padded and their key/value cache is copied to the sequences that share
    them (the samples of a GRPO group or a best-of-N draw share one prompt, and the prompt is about
    half of each sequence)."""
    import torch  # deferred: heavy import

    device = next(model.parameters()).device
    width_p = max(len(p) for p in prompts)
    p_ids = torch.full((len(prompts), width_p), pad_id, dtype=torch.long)
    p_mask = torch.zeros_like(p_ids)
    for i, p in enumerate(prompts):
        p_ids[i, width_p - len(p):] = torch.tensor(p)
        p_mask[i, width_p - len(p):] = 1
    p_ids, p_mask = p_ids.to(device), p_mask.to(device)
    out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=(p_mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), -1)  # the first completion token's distribution
    rows = torch.tensor(group, device=device)
    cache = out.past_key_values
    cache.batch_select_indices(rows)
    width_c = max(len(c) for c in completions)
    c_ids = torch.full((len(completions), width_c), pad_id, dtype=torch.long, device=device)
    c_mask = torch.zeros_like(c_ids)
    for i, c in enumerate(completions):
        c_ids[i, : len(c)] = torch.tensor(c)
        c_mask[i, : len(c)] = 1
    lengths = p_mask.sum(-1)[rows]
    logits = model(input_ids=c_ids, attention_mask=torch.cat([p_mask[rows], c_mask], dim=1),
                   position_ids=lengths[:, None] + torch.arange(width_c, device=device)[None, :],
                   past_key_values=cache, use_cache=True).logits
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, c_ids[:, 1:, None])[..., 0]
    return torch.cat([first[rows].gather(-1, c_ids[:, :1]), lp], dim=1)


def q_logits(policy_logps, reference_logps, completion_start, attention_mask, beta: float):
    """Token-classification-style logits ``[B, L, 2]`` = ``[0, q_t]``: ``q_t`` is beta times the
    log-ratio summed over completion tokens ``completion_start[b] <= s <= t``."""
    import torch  # deferred: heavy import

    positions = torch.arange(policy_logps.shape[1], device=policy_logps.device)[None, :]
    mask = (positions >= completion_start[:, None].to(positions.device)) & attention_mask.bool()
    q = beta * torch.cumsum((policy_logps - reference_logps) * mask, dim=1)
    return torch.stack([torch.zeros_like(q), q], dim=-1)


def _starts(batch: dict[str, Any]):
    if batch.get("completion_start") is None:
        raise KeyError("an implicit PRM batch needs completion_start (featurize adds it)")
    return batch["completion_start"]


class ImplicitHead:
    """Turns a causal LM's output logits into step logits; the reference runs without gradients.

    Called by ``PRMTrainer`` and the DreamPRM look-ahead with the trained model's raw logits and
    the batch (``input_ids``, ``attention_mask``, ``completion_start``)."""

    def __init__(self, reference, beta: float):
        reference.eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        self.reference = reference
        self.beta = beta

    def __call__(self, lm_logits, batch: dict[str, Any]):
        """Step logits from the trained model's full output logits (training, the look-ahead)."""
        return self._q(token_logps(lm_logits, batch["input_ids"]), batch)

    def score_logits(self, model, batch: dict[str, Any]):
        """Step logits with both models run here, the LM heads only where needed (scoring)."""
        return self._q(completion_logps(model, batch["input_ids"], batch["attention_mask"], _starts(batch)), batch)

    def step_scores(self, model, prompts: list[list[int]], completions: list[list[int]],
                    offsets: list[list[int]], pad_id: int) -> list[list[float]]:
        """P(step correct) = sigmoid(q_k) of each sequence ``prompts[i] + completions[i]`` at the
        completion offsets of its steps' last tokens; each distinct prompt runs once per model
        (:func:`shared_prompt_logps`). Equal to :meth:`score_logits` on the concatenated sequences
        up to float rounding (tested)."""
        import torch  # deferred: heavy import

        distinct: dict[tuple[int, ...], int] = {}
        group = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
        unique = [list(p) for p in distinct]
        ref = self._reference_on(next(model.parameters()).device)
        with torch.no_grad():
            policy_lp = shared_prompt_logps(model, unique, completions, group, pad_id)
            ref_lp = shared_prompt_logps(ref, unique, completions, group, pad_id)
        # the completions start at 0 and are right-padded: a sum up to a step's offset never reaches the padding
        starts = torch.zeros(len(completions), dtype=torch.long, device=policy_lp.device)
        logits = q_logits(policy_lp, ref_lp, starts, torch.ones_like(policy_lp, dtype=torch.long), self.beta)
        probs = logits[..., 1].sigmoid().cpu()
        return [probs[i, offs].tolist() for i, offs in enumerate(offsets)]

    def _reference_on(self, device):
        if next(self.reference.parameters()).device != device:
            self.reference.to(device)
        return self.reference

    def _q(self, policy_lp, batch: dict[str, Any]):
        import torch  # deferred: heavy import

        ids, mask, starts = batch["input_ids"], batch["attention_mask"], _starts(batch)
        with torch.no_grad():
            ref_lp = completion_logps(self._reference_on(ids.device), ids, mask, starts)
        return q_logits(policy_lp, ref_lp, starts, mask, self.beta)

