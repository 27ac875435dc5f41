"""Where evaluation results live, how they are keyed, and how they are read back.

A stage checkpoint is immutable once complete, so eval never edits what the stage wrote: it adds
``<checkpoint>/eval/<key>/``, one folder per evaluation, built as ``<key>.partial/`` and renamed
when complete (``results.json`` is written last inside it). ``<key>`` is the first 16 hex digits
of the sha256 of what determines the numbers: the model's identity (the checkpoint's manifest
sha256; for a plain folder the sha256 of its weight and config files; for a hub id its commit),
the eval config (sets, tasks, decoding, samples, seed, ...) and the problems themselves. The same
model, config and data find the same folder and are not evaluated again; a retrained checkpoint
has a new manifest, so a new key: stale results cannot come back.

Models that are not stage checkpoints (a hub id, a plain folder) get their results under
``--output_dir`` (default ``runs/eval/<model-slug>/<key>/``).

Inside a result folder: ``results.json`` (metrics per eval set and mode, the config, the model
identity, timings, package versions), ``config.json`` and ``details/<mode>_<set>.jsonl`` (one
row per problem and sample: completion, executed or extracted answer, correctness, status).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from stages.common.checkpoint import CheckpointError, resolve_parent, sha256_file, sha256_json
from stages.common.data import write_json, write_jsonl

EVAL_DIR = "eval"
RESULTS = "results.json"
FORMAT_VERSION = 1
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "config.json", "adapter_config.json",
                    "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def model_identity(spec: str) -> dict[str, Any]:
    """What identifies the weights behind ``spec`` (a checkpoint, stage folder, folder or hub id)."""
    try:
        parent = resolve_parent(spec)
    except CheckpointError as e:
        raise SystemExit(f"eval: --model {e}") from e
    ident: dict[str, Any] = {"spec": spec, "path": parent.path, "kind": parent.kind}
    if parent.kind == "checkpoint":
        ident["manifest_sha256"] = parent.manifest_sha256
        ident["stage"] = (parent.manifest or {}).get("stage")
        ident["version"] = (parent.manifest or {}).get("version")
        ident["run"] = (parent.manifest or {}).get("run")
    elif parent.kind == "local":
        ident["weights_sha256"] = folder_sha256(Path(parent.path))
    return ident


def folder_sha256(folder: Path) -> str:
    """sha256 over the names and contents of a model folder's weight, config and tokenizer files."""
    files = sorted({p for pat in _WEIGHT_PATTERNS for p in folder.glob(pat) if p.is_file()})
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def eval_key(identity: dict, config: dict, data: dict[str, str]) -> str:
    """The result folder's name: hash of model identity, eval config and problem data."""
    ident = {k: v for k, v in identity.items() if k not in ("spec",)}
    return sha256_json({"format": FORMAT_VERSION, "model": ident, "config": config, "data": data})[:16]


def problems_sha256(problems: Any) -> str:
    return sha256_json([[p["id"], p["question"], p["answer"]] for p in problems])


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def results_root(identity: dict, output_dir: str | None) -> Path:
    """``<checkpoint>/eval`` for stage checkpoints, else ``output_dir`` (or runs/eval/<slug>)."""
    if output_dir:
        return Path(output_dir)
    if identity["kind"] == "checkpoint":
        return Path(identity["path"]) / EVAL_DIR
    return Path("runs") / "eval" / slug(identity["spec"])


def find_complete(root: Path, key: str) -> Path | None:
    folder = root / key
    return folder if (folder / RESULTS).is_file() else None


def publish(root: Path, key: str, results: dict, details: dict[str, list[dict]], config: dict) -> Path:
    """Write a result folder atomically: ``<key>.partial/`` first, ``results.json`` last, then the
    rename. When another run published the same key meanwhile, its folder is kept."""
    final = root / key
    partial = root / f"{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_json(partial / "config.json", config)
    for name, rows in details.items():
        write_jsonl(partial / "details" / f"{name}.jsonl", rows)
    write_json(partial / RESULTS, results)
    try:
        os.replace(partial, final)
    except OSError:
        if find_complete(root, key) is None:
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return final


def read_results(checkpoint: str | os.PathLike) -> list[dict]:
    """Every complete evaluation of a checkpoint (``results.json`` contents plus ``path``), oldest
    first."""
    out = []
    for f in sorted(Path(checkpoint, EVAL_DIR).glob(f"*/{RESULTS}")):
        if f.parent.name.endswith(".partial"):
            continue
        try:
            r = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        out.append({**r, "path": str(f.parent)})
    return sorted(out, key=lambda r: r.get("finished_at", ""))
