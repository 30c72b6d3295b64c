"""Shared fixtures: real data from DATA_DIR (never copies). Helpers live in ``tests/helpers.py``
(``from tests.helpers import ...``, the one way tests import them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import ROOT


def _data_dir() -> Path:
    return Path(os.environ.get("DATA_DIR", ROOT / "data")).expanduser().resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder (DATA_DIR). Missing data is an error, not a skip."""
    path = _data_dir()
    if not (path / "cifar-10-batches-py").is_dir():
        pytest.fail(
            f"Real data not found in {path}: set DATA_DIR to the folder holding "
            "cifar-10-batches-py/, wikitext-2/ and gpt2-tokenizer/ (e.g. DATA_DIR=../shared/data)",
            pytrace=False,
        )
    return path
