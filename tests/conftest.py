"""Shared fixtures: real data from DATA_DIR (never copies). Helpers live in ``tests/helpers.py``
(``from tests.helpers import ...``, the one way tests import them)."""

from __future__ import annotations

import os
from pathlib import Path

# pytest-xdist: each worker (and every process a test starts, which inherits this) gets its share of
# the cores. Two processes that each take every core make OpenMP's spinning threads wait on one
# another: the ViT's steps 2.5x slower, a small network's far more (BENCHMARKS.md, "Jobs side by
# side on one CPU"). Set before torch is imported; an OMP_NUM_THREADS set by the caller wins.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))

import pytest  # noqa: E402

from tests.helpers import ROOT  # noqa: E402


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
