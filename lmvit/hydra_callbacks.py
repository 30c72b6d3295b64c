"""Hydra callbacks: a summary of every sweep, and a non-zero exit naming its failed jobs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lmvit.io import atomic_write_json

log = logging.getLogger(__name__)


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One record per job directory below ``sweep_dir`` that holds a metrics.json."""
    jobs = []
    for path in sorted(sweep_dir.rglob("metrics.json")):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            metrics = {"status": "unreadable", "error": {"message": str(exc)}}
        error = metrics.get("error") or {}
        jobs.append(
            {
                "dir": str(path.parent.relative_to(sweep_dir)),
                "status": metrics.get("status"),
                "overrides": metrics.get("overrides"),
                "best": metrics.get("best"),
                "error": error.get("message"),
            }
        )
    return jobs


class SweepSummary(Callback):
    """Writes ``<sweep dir>/sweep_summary.json`` after a multirun; exits 1 if any job failed.

    ``train.py`` records a failing job in its own ``metrics.json`` and lets the sweep go on, so
    one bad value or diverging optimizer costs one job, not the night.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = collect_jobs(sweep_dir)
        failed = [j for j in jobs if j["status"] != "completed"]
        atomic_write_json(
            sweep_dir / "sweep_summary.json",
            {"jobs": jobs, "completed": len(jobs) - len(failed), "failed": [j["dir"] for j in failed]},
        )
        log.info("Sweep summary: %d jobs, %d failed -> %s", len(jobs), len(failed), sweep_dir / "sweep_summary.json")
        if failed:
            lines = "\n".join(f"  {j['dir']}: {j['status']}: {j['error']}" for j in failed)
            log.error("%d of %d jobs failed:\n%s", len(failed), len(jobs), lines)
            raise SystemExit(1)
