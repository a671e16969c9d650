"""Shared fixtures: a private model cache per test session, tiny random HF checkpoints."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests never touch the user's ~/.cache: the tiny model is written to a session folder."""
    root = tmp_path_factory.mktemp("prfaas-cache")
    old = os.environ.get("PRFAAS_CACHE_DIR")
    os.environ["PRFAAS_CACHE_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("PRFAAS_CACHE_DIR", None)
    else:
        os.environ["PRFAAS_CACHE_DIR"] = old
