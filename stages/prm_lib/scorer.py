"""``PRMScorer``: per-step correctness probabilities from a PRM checkpoint, in batches.

Used by rewards/ (the PRM bonus), evolve, revise, eval and ``python -m stages.prm score``. The
steps come from ``stages.common.steps.split_solution`` and the encoding from
:func:`stages.prm_lib.model.encode_solution`, exactly as in training. An implicit PRM checkpoint
(``prm_type: implicit``) is a causal LM with its frozen reference in ``reference/``; the scorer
runs both and reads the same step logits as training (``stages.prm_lib.implicit``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stages.common.checkpoint import CheckpointError
from stages.common.modeling import load_causal_lm, load_tokenizer
from stages.common.steps import split_solution
from stages.prm_lib.implicit import REFERENCE_DIR, ImplicitHead, supports_prompt_sharing
from stages.prm_lib.model import (
    PRM_CONFIG,
    EncodingConfig,
    completion_start,
    encode_solution,
    load_token_classifier,
    step_probabilities,
)


def collate_ids(batch: Sequence[list[int]], pad_id: int):
    """Right-padded input ids and attention mask tensors."""
    import torch  # deferred: heavy import

    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return ids, mask


class PRMScorer:
    """Load a PRM checkpoint (a ``stages.prm`` output folder, ``latest`` or ``vN``) and score
    solutions: ``score(problems, solutions) -> list[list[float]]``, one probability per step."""

    CACHE_ENTRIES = 100_000

    @staticmethod
    def checkpoint_folder(checkpoint: str | Path) -> Path:
        """A stage folder's ``latest`` version, or the folder itself."""
        path = Path(checkpoint)
        if (path / "latest").exists() and not (path / "config.json").exists():
            path = (path / "latest").resolve()
        return path

    @classmethod
    def check(cls, checkpoint: str | Path) -> Path:
        """Check, without loading a model, that ``checkpoint`` is a PRM checkpoint this scorer can
        load; a :class:`~stages.common.checkpoint.CheckpointError` names what is wrong."""
        path = cls.checkpoint_folder(checkpoint)
        if not path.is_dir():
            raise CheckpointError(f"PRM checkpoint '{checkpoint}' does not exist")
        if not (path / PRM_CONFIG).is_file():
            raise CheckpointError(f"'{checkpoint}' is not a PRM checkpoint: {path / PRM_CONFIG} is missing (a PRM "
                                  f"checkpoint is written by the prm stage)")
        try:
            config = EncodingConfig.load(path)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path / PRM_CONFIG}: not a valid PRM config: {e}") from e
        if config.prm_type == "implicit" and not (path / REFERENCE_DIR / "config.json").is_file():
            raise CheckpointError(f"{path / REFERENCE_DIR}: missing; an implicit PRM checkpoint keeps its reference "
                                  "model there")
        if not (path / "config.json").is_file():
            raise CheckpointError(f"'{checkpoint}' is not a PRM checkpoint: {path / 'config.json'} is missing")
        return path

    def __init__(self, checkpoint: str | Path, *, batch_size: int = 64, device: str | None = None, model=None,
                 tokenizer=None, config: EncodingConfig | None = None, reference=None):
        import torch  # deferred: heavy import


        path = self.checkpoint_folder(checkpoint)
        self.path = path
        self.config = config or EncodingConfig.load(path)
        self.tokenizer = tokenizer or load_tokenizer(str(path), padding_side="right")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.head = None
        if self.config.prm_type == "implicit":

            if reference is None:
                if not (path / REFERENCE_DIR / "config.json").is_file():
                    raise FileNotFoundError(f"{path / REFERENCE_DIR}: missing; an implicit PRM checkpoint keeps its "
                                            "reference model there")
                reference = load_causal_lm(str(path / REFERENCE_DIR))
                reference.to(self.device)
            self.model = model or load_causal_lm(str(path))
            self.head = ImplicitHead(reference, self.config.implicit_beta)
        else:
            self.model = model or load_token_classifier(str(path), self.config.num_labels)
        if model is None:
            self.model.to(self.device)
        self.model.eval()
        self.batch_size = batch_size
        # implicit PRM: run each distinct prompt once per batch and reuse its key/value cache
        self.share_prompts = self.head is not None and supports_prompt_sharing(self.model, self.head.reference)
        self._cache: dict = {}  # tokenised prompts and step pieces (encode_solution's cache)

    def score_steps(self, problems: Sequence[str], steps: Sequence[list[str]]) -> list[list[float]]:
        """Scores of already-split steps (what training sees)."""
        import torch  # deferred: heavy import

        if len(problems) != len(steps):
            raise ValueError(f"PRMScorer: {len(problems)} problems for {len(steps)} solutions")
        # The samples of a group are often identical (a confident policy): score each distinct
        # (problem, steps) pair once.
        slot: dict[tuple[str, tuple[str, ...]], int] = {}
        where = [slot.setdefault((q, tuple(s)), len(slot)) for q, s in zip(problems, steps, strict=True)]
        if len(self._cache) > self.CACHE_ENTRIES:
            self._cache.clear()
        encoded = [encode_solution(self.tokenizer, q, list(s), self.config, truncate=False, cache=self._cache)
                   for q, s in slot]
        # the implicit PRM sums log-ratios from the first step token on
        starts_of = [completion_start(self.tokenizer, q, self.config, self._cache) for q, _ in slot] if self.head else []
        out: list[list[float]] = [[] for _ in encoded]
        order = sorted((i for i in range(len(encoded)) if encoded[i][1]), key=lambda i: len(encoded[i][0]))
        pad = self.tokenizer.pad_token_id or 0
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                if self.share_prompts:
                    cut = [starts_of[i] for i in batch]
                    scores = self.head.step_scores(
                        self.model, [encoded[i][0][:c] for i, c in zip(batch, cut, strict=True)],
                        [encoded[i][0][c:] for i, c in zip(batch, cut, strict=True)],
                        [[p - c for p in encoded[i][1]] for i, c in zip(batch, cut, strict=True)], pad)
                    for i, sc in zip(batch, scores, strict=True):
                        out[i] = sc
                    continue
                ids, mask = collate_ids([encoded[i][0] for i in batch], pad)
                ids, mask = ids.to(device), mask.to(device)
                if self.head is not None:
                    starts = torch.tensor([starts_of[i] for i in batch], dtype=torch.long, device=device)
                    logits = self.head.score_logits(self.model, {"input_ids": ids, "attention_mask": mask,
                                                                 "completion_start": starts})
                else:
                    logits = self.model(input_ids=ids, attention_mask=mask).logits
                probs = step_probabilities(logits, self.config.label_mode).cpu()
                for row, i in enumerate(batch):
                    out[i] = probs[row, encoded[i][1]].tolist()
        return [list(out[j]) for j in where]

    def score(self, problems: Sequence[str], solutions: Sequence[str]) -> list[list[float]]:
        """Per-step P(correct) of each solution; a solution without steps gets ``[]``."""
        return self.score_steps(problems, [split_solution(s) for s in solutions])
