"""Shared fixtures: the local GSM8K copy and a tiny base checkpoint built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    from stages.common.data import gsm8k_dir as find

    d = find()
    if d is None:
        raise RuntimeError("GSM8K local copy not found: expected ../shared/data/gsm8k or $MATHFORGE_GSM8K_DIR")
    return d


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A complete ``base`` checkpoint of the embedded tiny model (built once per session)."""
    from stages.common.modeling import materialize_parent

    run_dir = tmp_path_factory.mktemp("runs") / "shared"
    return Path(materialize_parent("tiny", run_dir).path)


@pytest.fixture(scope="session")
def qwen_shape_model() -> Path:
    """Qwen2.5-Math-1.5B's shape (hidden 1536, 12/2 heads, vocabulary 151,936, tied embeddings) with 2 layers
    and random weights, and a tokenizer of Qwen2.5's layout (stages.common.qwen_shape).

    Built once and kept on disk under the temp folder (``$MATHFORGE_TEST_CACHE``, default
    ``<tmp>/mathforge-test-cache``), keyed by the builder's source, so later sessions reuse it (about 25 s
    to build, 650 MB); a lock keeps two sessions from building it at once."""
    import fcntl
    import hashlib
    import tempfile

    from stages.common import memory, qwen_shape

    source = b"".join(Path(m.__file__).read_bytes() for m in (qwen_shape, memory))
    key = hashlib.sha256(source).hexdigest()[:12]
    cache = Path(os.environ.get("MATHFORGE_TEST_CACHE") or Path(tempfile.gettempdir()) / "mathforge-test-cache")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "qwen-shape.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return qwen_shape.build_qwen_shape_checkpoint(cache / f"qwen-shape-2l-{key}", num_layers=2)
