"""Hydra callbacks: a summary of every sweep, and a non-zero exit naming its failed jobs."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lmvit.io import atomic_write_json

log = logging.getLogger(__name__)


# overrides that may differ when a sweep is rerun: they change how it runs, not its jobs
RERUN_KEYS = ("rerun_failed", "hydra.", "callbacks.progress_bar", "trainer.log_every_n_steps")


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One record per job directory below ``sweep_dir`` (a folder Hydra wrote ``.hydra/`` into);
    a job that stopped before writing its metrics.json counts, as ``not started``."""
    jobs = []
    job_dirs = {p.parent for p in sweep_dir.rglob(".hydra")} | {p.parent for p in sweep_dir.rglob("metrics.json")}
    for job in sorted(d for d in job_dirs if d != sweep_dir and "resumes" not in d.relative_to(sweep_dir).parts):
        path = job / "metrics.json"
        try:
            metrics = json.loads(path.read_text())
        except FileNotFoundError:
            metrics = {"status": "not started", "error": {"message": f"no {path.name}: see {job / 'train.log'}"}}
        except (OSError, json.JSONDecodeError) as exc:
            metrics = {"status": "unreadable", "error": {"message": str(exc)}}
        error = metrics.get("error") or {}
        jobs.append(
            {
                "dir": str(job.relative_to(sweep_dir)),
                "status": metrics.get("status"),
                "overrides": metrics.get("overrides"),
                "best": metrics.get("best"),
                "error": error.get("message"),
            }
        )
    return jobs


def sweep_overrides(config: DictConfig) -> list[str]:
    """A sweep's task overrides that define its jobs (sorted), as typed: an override whose value
    interpolates a swept key (``optimizer.lr=${trial.lr}``) is not resolved here."""
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    return sorted(str(o) for o in task if not str(o).lstrip("+~").startswith(RERUN_KEYS))


class SweepSummary(Callback):
    """Writes ``<sweep dir>/sweep_summary.json`` after a multirun; exits 1 if any job failed.

    ``train.py`` records a failing job in its own ``metrics.json`` and lets the sweep go on, so
    one bad value or diverging optimizer costs one job, not the night.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A rerun of a sweep (the same ``hydra.sweep.dir``) must have the sweep's overrides: its
        jobs find their earlier sessions by name. Checked before Hydra rewrites multirun.yaml."""
        saved = Path(config.hydra.sweep.dir) / "multirun.yaml"
        if not saved.is_file():
            return
        before, now = sweep_overrides(OmegaConf.load(saved)), sweep_overrides(config)
        if before != now:
            gone, new = sorted(set(before) - set(now)), sorted(set(now) - set(before))
            print(
                f"error: hydra.sweep.dir={config.hydra.sweep.dir} holds a sweep of other settings "
                f"(missing now: {' '.join(gone) or '-'}; new: {' '.join(new) or '-'}): rerun it with its own "
                f"overrides ({' '.join(before)}) or choose another hydra.sweep.dir",
                file=sys.stderr,
            )
            raise SystemExit(2)
        log.info("Rerunning the sweep in %s: completed jobs are skipped, stopped ones resumed", saved.parent)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = collect_jobs(sweep_dir)
        failed = [j for j in jobs if j["status"] != "completed"]
        if not jobs:
            log.error("Sweep summary: no job ran in %s", sweep_dir)
            raise SystemExit(1)
        atomic_write_json(
            sweep_dir / "sweep_summary.json",
            {"jobs": jobs, "completed": len(jobs) - len(failed), "failed": [j["dir"] for j in failed]},
        )
        log.info("Sweep summary: %d jobs, %d failed -> %s", len(jobs), len(failed), sweep_dir / "sweep_summary.json")
        if failed:
            lines = "\n".join(f"  {j['dir']}: {j['status']}: {j['error']}" for j in failed)
            log.error("%d of %d jobs failed:\n%s", len(failed), len(jobs), lines)
            raise SystemExit(1)
