"""``PRMScorer``: per-step correctness probabilities from a PRM checkpoint, in batches.

Used by rewards/ (the PRM bonus), evolve, revise, eval and ``python -m stages.prm score``. The
steps come from ``stages.common.steps.split_solution`` and the encoding from
:func:`stages.prm_lib.model.encode_solution`, exactly as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stages.common.steps import split_solution
from stages.prm_lib.model import EncodingConfig, encode_solution, load_token_classifier, step_probabilities


def collate_ids(batch: Sequence[list[int]], pad_id: int):
    """Right-padded input ids and attention mask tensors."""
    import torch  # noqa: PLC0415

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

    def __init__(self, checkpoint: str | Path, *, batch_size: int = 64, device: str | None = None, model=None,
                 tokenizer=None, config: EncodingConfig | None = None):
        import torch  # noqa: PLC0415

        from stages.common.modeling import load_tokenizer  # noqa: PLC0415

        path = Path(checkpoint)
        if (path / "latest").exists() and not (path / "config.json").exists():
            path = (path / "latest").resolve()
        self.path = path
        self.config = config or EncodingConfig.load(path)
        self.tokenizer = tokenizer or load_tokenizer(str(path), padding_side="right")
        self.model = model or load_token_classifier(str(path), self.config.num_labels)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model is None:
            self.model.to(self.device)
        self.model.eval()
        self.batch_size = batch_size
        self._cache: dict = {}  # tokenised prompts and step pieces (encode_solution's cache)

    def score_steps(self, problems: Sequence[str], steps: Sequence[list[str]]) -> list[list[float]]:
        """Scores of already-split steps (what training sees)."""
        import torch  # noqa: PLC0415

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
        out: list[list[float]] = [[] for _ in encoded]
        order = sorted((i for i in range(len(encoded)) if encoded[i][1]), key=lambda i: len(encoded[i][0]))
        pad = self.tokenizer.pad_token_id or 0
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                ids, mask = collate_ids([encoded[i][0] for i in batch], pad)
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                probs = step_probabilities(logits, self.config.label_mode).cpu()
                for row, i in enumerate(batch):
                    out[i] = probs[row, encoded[i][1]].tolist()
        return [list(out[j]) for j in where]

    def score(self, problems: Sequence[str], solutions: Sequence[str]) -> list[list[float]]:
        """Per-step P(correct) of each solution; a solution without steps gets ``[]``."""
        return self.score_steps(problems, [split_solution(s) for s in solutions])
