"""Shared fixtures: real data from DATA_DIR (never copies), and running train.py as users do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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


def run_train(*overrides: str, log_dir: Path, data_dir: Path | None = None, check: bool = True,
              timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python train.py <overrides>`` in a subprocess with logs under ``log_dir``."""
    args = [sys.executable, str(ROOT / "train.py"), *overrides, f"paths.log_dir={log_dir}"]
    if data_dir is not None:
        args.append(f"data.data_dir={data_dir}")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"train.py {' '.join(overrides)} exited {proc.returncode}\n"
            f"--- stdout (tail)\n{proc.stdout[-4000:]}\n--- stderr (tail)\n{proc.stderr[-6000:]}"
        )
    return proc


def find_runs(log_dir: Path) -> list[Path]:
    """Run directories (those holding metrics.json) below ``log_dir``, sorted."""
    return sorted(p.parent for p in Path(log_dir).rglob("metrics.json"))


def load_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())
