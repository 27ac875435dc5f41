"""``PRMScorer``: per-step correctness probabilities from a PRM checkpoint, in batches.

Used by rewards/ (the PRM bonus), evolve, revise, eval and ``python -m stages.prm score``. The
steps come from ``stages.common.steps.split_solution`` and the encoding from
:func:`stages.prm_lib.model.encode_solution`, exactly as in training. An implicit PRM checkpoint
(``prm_type: implicit``) is a causal LM with its frozen reference in ``reference/``; the scorer
runs both and reads the same step logits as training (``stages.prm_lib.implicit``). A sequence
classifier (``prm_type: sequence_classification``, the seed's design) runs once per step prefix;
an embeddings PRM embeds each (question, step) with its frozen encoder (``encoder/``) and runs its
head (``stages.prm_lib.embeddings``). ``class_probabilities`` and ``predict_steps`` give each step's
class probabilities and predicted class (``python -m stages.prm predict``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stages.common.checkpoint import CheckpointError
from stages.common.modeling import load_causal_lm, load_tokenizer
from stages.common.steps import split_solution
from stages.prm_lib.implicit import REFERENCE_DIR, ImplicitHead, supports_prompt_sharing
from stages.prm_lib.model import (
    ENCODER_DIR,
    PRM_CONFIG,
    EncodingConfig,
    completion_start,
    encode_solution,
    load_sequence_classifier,
    load_token_classifier,
    prefix_sequences,
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
        if config.prm_type == "embeddings" and not (path / ENCODER_DIR / "config.json").is_file():
            raise CheckpointError(f"{path / ENCODER_DIR}: missing; an embeddings PRM checkpoint keeps its frozen "
                                  "encoder there")
        if not (path / "config.json").is_file():
            raise CheckpointError(f"'{checkpoint}' is not a PRM checkpoint: {path / 'config.json'} is missing")
        return path

    def __init__(self, checkpoint: str | Path, *, batch_size: int = 64, device: str | None = None, model=None,
                 tokenizer=None, config: EncodingConfig | None = None, reference=None, encoder=None):
        import torch  # deferred: heavy import


        path = self.checkpoint_folder(checkpoint)
        self.path = path
        self.config = config or EncodingConfig.load(path)
        embeddings = self.config.prm_type == "embeddings"
        self.tokenizer = tokenizer or (None if embeddings else load_tokenizer(str(path), padding_side="right"))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.head = self.encoder = None
        if self.config.prm_type == "embeddings":
            from stages.prm_lib.embeddings import StepEncoder, StepHeadModel  # deferred: imports transformers

            self.encoder = encoder or StepEncoder(path / ENCODER_DIR, max_length=self.config.max_length,
                                                  device=self.device)
            self.tokenizer = self.encoder.tokenizer
            self.model = model or StepHeadModel.from_pretrained(str(path))
        elif self.config.prm_type == "implicit":

            if reference is None:
                if not (path / REFERENCE_DIR / "config.json").is_file():
                    raise FileNotFoundError(f"{path / REFERENCE_DIR}: missing; an implicit PRM checkpoint keeps its "
                                            "reference model there")
                reference = load_causal_lm(str(path / REFERENCE_DIR))
                reference.to(self.device)
            self.model = model or load_causal_lm(str(path))
            self.head = ImplicitHead(reference, self.config.implicit_beta)
        elif self.config.prm_type == "sequence_classification":
            self.model = model or load_sequence_classifier(str(path), self.config.num_labels,
                                                           pad_token_id=self.tokenizer.pad_token_id)
        else:
            self.model = model or load_token_classifier(str(path), self.config.num_labels)
        if model is None:
            self.model.to(self.device)
        self.model.eval()
        self.batch_size = batch_size
        # implicit PRM: run each distinct prompt once per batch and reuse its key/value cache
        self.share_prompts = self.head is not None and supports_prompt_sharing(self.model, self.head.reference)
        self._cache: dict = {}  # tokenised prompts and step pieces (encode_solution's cache)

    def class_probabilities(self, problems: Sequence[str], steps: Sequence[list[str]]) -> list[list[list[float]]]:
        """Each step's probability of each class (``self.config.class_names``: wrong / correct, or
        negative / neutral / positive), for already-split steps."""
        import torch  # deferred: heavy import

        if len(problems) != len(steps):
            raise ValueError(f"PRMScorer: {len(problems)} problems for {len(steps)} solutions")
        # The samples of a group are often identical (a confident policy): score each distinct
        # (problem, steps) pair once.
        slot: dict[tuple[str, tuple[str, ...]], int] = {}
        where = [slot.setdefault((q, tuple(s)), len(slot)) for q, s in zip(problems, steps, strict=True)]
        if self.encoder is not None:
            out = self._embedding_probabilities(list(slot))
            return [list(out[j]) for j in where]
        if len(self._cache) > self.CACHE_ENTRIES:
            self._cache.clear()
        encoded = [encode_solution(self.tokenizer, q, list(s), self.config, truncate=False, cache=self._cache)
                   for q, s in slot]
        if self.config.prm_type == "sequence_classification":
            out = self._prefix_probabilities(encoded)
            return [list(out[j]) for j in where]
        # the implicit PRM sums log-ratios from the first step token on
        starts_of = [completion_start(self.tokenizer, q, self.config, self._cache) for q, _ in slot] if self.head else []
        out: list[list[list[float]]] = [[] for _ in encoded]
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
                        out[i] = [[1.0 - p, p] for p in sc]
                    continue
                ids, mask = collate_ids([encoded[i][0] for i in batch], pad)
                ids, mask = ids.to(device), mask.to(device)
                if self.head is not None:
                    starts = torch.tensor([starts_of[i] for i in batch], dtype=torch.long, device=device)
                    logits = self.head.score_logits(self.model, {"input_ids": ids, "attention_mask": mask,
                                                                 "completion_start": starts})
                else:
                    logits = self.model(input_ids=ids, attention_mask=mask).logits
                probs = logits.float().softmax(-1).cpu()
                for row, i in enumerate(batch):
                    out[i] = probs[row, encoded[i][1]].tolist()
        return [list(out[j]) for j in where]

    def _prefix_probabilities(self, encoded: list[tuple[list[int], list[int]]]) -> list[list[list[float]]]:
        """The sequence classifier (the seed's PRM): one pass per step prefix, in length-sorted batches."""
        import torch  # deferred: heavy import

        jobs = [(i, seq) for i, (ids, pos) in enumerate(encoded) for seq in prefix_sequences(ids, pos)]
        order = sorted(range(len(jobs)), key=lambda j: len(jobs[j][1]))
        probs: list[list[float]] = [[] for _ in jobs]
        pad = self.tokenizer.pad_token_id or 0
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                ids, mask = collate_ids([jobs[j][1] for j in batch], pad)
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                for j, p in zip(batch, logits.float().softmax(-1).cpu().tolist(), strict=True):
                    probs[j] = p
        out: list[list[list[float]]] = [[] for _ in encoded]
        for (i, _), p in zip(jobs, probs, strict=True):
            out[i].append(p)
        return out

    def _embedding_probabilities(self, items: list[tuple[str, tuple[str, ...]]]) -> list[list[list[float]]]:
        """The embeddings PRM: the frozen encoder embeds each (question, step), the head classifies."""
        import torch  # deferred: heavy import

        vectors = self.encoder.embed([q for q, _ in items], [list(s) for _, s in items])
        out: list[list[list[float]]] = []
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for v in vectors:
                if not len(v):
                    out.append([])
                    continue
                logits = self.model(inputs_embeds=v[None].to(device)).logits[0]
                out.append(logits.float().softmax(-1).cpu().tolist())
        return out

    def step_score(self, probabilities: Sequence[float]) -> float:
        """P(step correct) from a step's class probabilities (three classes: 1 - P(negative))."""
        return 1.0 - probabilities[0] if self.config.label_mode == "three" else probabilities[1]

    def score_steps(self, problems: Sequence[str], steps: Sequence[list[str]]) -> list[list[float]]:
        """Scores of already-split steps (what training sees)."""
        return [[self.step_score(p) for p in sol] for sol in self.class_probabilities(problems, steps)]

    def predict_steps(self, problems: Sequence[str], steps: Sequence[list[str]]) -> list[list[dict]]:
        """Each step's predicted class (the most probable one), its class probabilities and its
        score (P(correct))."""
        names = self.config.class_names
        return [[{"label": names[max(range(len(p)), key=p.__getitem__)],
                  "probabilities": dict(zip(names, p, strict=True)), "score": self.step_score(p)} for p in sol]
                for sol in self.class_probabilities(problems, steps)]

    def score(self, problems: Sequence[str], solutions: Sequence[str]) -> list[list[float]]:
        """Per-step P(correct) of each solution; a solution without steps gets ``[]``."""
        return self.score_steps(problems, [split_solution(s) for s in solutions])
