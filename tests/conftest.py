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
