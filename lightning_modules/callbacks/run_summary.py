"""The run summary: ``metrics.json``, written atomically at the end of fit, after test, and on failure."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from lightning_modules.callbacks.stop import is_stop
from lightning_modules.callbacks.timing import load_1m, machine_state
from lightning_modules.optim import kernel_in_use
from lmvit.errors import DivergenceError, machine_failure
from lmvit.io import atomic_write_json
from lmvit.runs import CRASHED, FAILED

log = logging.getLogger(__name__)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)
    }


class RunSummary(pl.Callback):
    """Collects per-epoch metrics and writes ``metrics.json`` (atomically) at the end of
    fit, after test, and on failure. Shape: see DESIGN/README."""

    def __init__(
        self,
        path: str,
        task: str,
        monitor: str,
        mode: str = "max",
        seed: int | None = None,
        overrides: list[str] | None = None,
        experiment: dict[str, Any] | None = None,
        previous: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.monitor, self.mode = monitor, mode
        self.history: list[dict[str, float]] = []
        self.summary: dict[str, Any] = {
            "status": "running",
            "task": task,
            "overrides": list(overrides or []),
            # preset name, human label and study row, e.g. {"name": "table2_1_adam",
            # "label": "ViT pre-norm 2L Adam", "study_config": "table2/1"}; the report matches on it
            "experiment": {str(k): v for k, v in (experiment or {}).items()},
            "seed": seed,
            "epochs": 0,
            "final": {},
            "best": {},
            "test": {},
            "train_seconds": 0.0,
            "peak_memory_mb": None,
            "peak_rss_mb": None,
            "params": {},
            "error": None,
            "versions": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "pytorch_lightning": pl.__version__,
            },
            "git_commit": _git_commit(),
            "pieces": 1,  # the sessions the run was trained in (a resume adds one)
            "history": self.history,
        }
        if previous:  # a resumed run: keep everything the earlier sessions measured, then append
            kept = {k: v for k, v in previous.items() if k not in ("status", "error", "history", "versions")}
            self.summary.update(kept)
            self.summary["pieces"] = int(previous.get("pieces", 1)) + 1
            self.history[:] = list(previous.get("history", []))

    # -- collection ------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        counts = getattr(pl_module, "parameter_counts", None)
        self.summary["params"] = counts() if counts else {}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"params/{k}": v for k, v in self.summary["params"].items()}, step=0)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._load_at_start = load_1m()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = _scalars(trainer.callback_metrics)
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        row.update({k: v for k, v in metrics.items() if not k.endswith("_step")})
        # the machine's load while the epoch ran: timings are compared only between runs measured alone
        row.update(machine_state(getattr(self, "_load_at_start", None)))
        # resumed runs re-enter an epoch: keep one row per epoch
        self.history[:] = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]
        self._refresh()
        self.write()  # every finished epoch is on disk, even if the run is killed later

    def _refresh(self) -> None:
        """The summary fields, derived from the history (after an epoch, and after a resume)."""
        if not self.history:
            return
        row = max(self.history, key=lambda r: r["epoch"])
        self.summary["epochs"] = row["epoch"] + 1
        self.summary["final"] = {k: v for k, v in row.items() if k.split("/")[0] in ("train", "val")}
        self.summary["train_seconds"] = row.get("time/train_s", 0.0)
        self.summary["peak_memory_mb"] = row.get("memory/peak_gpu_mb")
        self.summary["peak_rss_mb"] = row.get("memory/peak_rss_mb")
        self._update_best()

    def _update_best(self) -> None:
        rows = [r for r in self.history if _finite(r.get(self.monitor))]
        if not rows:
            return
        pick = max if self.mode == "max" else min
        best = pick(rows, key=lambda r: r[self.monitor])
        self.summary["best"] = {self.monitor: best[self.monitor], "epoch": best["epoch"]}

    def on_fit_end(self, trainer, pl_module) -> None:
        # every process marks the fit completed (train.py then tests on all of them); rank 0 writes
        if self.summary["status"] == "running":
            self.summary["status"] = "completed"
            self.write()

    def on_test_end(self, trainer, pl_module) -> None:
        metrics = _scalars(trainer.callback_metrics)
        self.summary["test"] = {k: v for k, v in metrics.items() if k.startswith("test/")}
        if trainer.is_global_zero:
            self.write()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.is_global_zero:
            self.fail(exception)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # applied when training resumes (on_train_start): testing a checkpoint also loads
        # callback states, and must not roll the history back to that checkpoint's epoch
        self._restored_history = state_dict["history"]

    def on_train_start(self, trainer, pl_module) -> None:
        restored = getattr(self, "_restored_history", None)
        if restored is not None:
            # the checkpoint's rows, and the earlier sessions' rows it predates (a checkpoint taken
            # at validation end precedes its epoch's row); epochs from the restart on are redone
            rows = {r["epoch"]: r for r in self.history if r["epoch"] < trainer.current_epoch}
            rows.update({r["epoch"]: r for r in restored})
            self.history[:] = [rows[e] for e in sorted(rows)]
            self._restored_history = None
            self._refresh()
        if trainer.optimizers:  # what the optimizer runs: a resumed run keeps its checkpoint's kernel
            kernel = kernel_in_use(trainer.optimizers[0])
            if self.summary.get("optimizer_kernel") not in (None, kernel):
                log.info("Optimizer kernel %s, as this run started (its checkpoint's setting)", kernel)
            self.record("optimizer_kernel", kernel)

    def record(self, key: str, value: Any) -> None:
        """Add (or replace) a top-level entry of ``metrics.json``, written with the next write; for
        other callbacks' results (e.g. ``per_class`` from ``inspection.ClassInspection``)."""
        self.summary[key] = value

    # -- output ----------------------------------------------------------------------------
    def fail(self, exception: BaseException, status: str | None = None) -> None:
        """Record a failure (idempotent: the first error wins) and write the file."""
        if self.summary["status"] in (*FAILED, CRASHED, "interrupted"):
            return
        if status is None:
            if isinstance(exception, DivergenceError):
                status = "diverged"
            elif is_stop(exception):  # SIGTERM or Ctrl-C: resumable (StopCheckpoint saved last.ckpt)
                status = "interrupted"
            elif machine_failure(exception):  # a full disk, not the run's settings: a rerun continues it
                status = CRASHED
            else:
                status = "failed"
        self.summary["status"] = status
        self.summary["error"] = {
            "type": type(exception).__name__,
            "message": str(exception),
            "traceback": "".join(traceback.format_exception(exception))[-4000:],
        }
        try:
            self.write()
        except OSError as error:  # a full disk: the file keeps its last epoch's state, which a rerun resumes
            log.error("Could not write %s (status %s): %s", self.path, status, error)

    @rank_zero_only  # one metrics.json per run: under DDP only global rank 0 writes, failures included
    def write(self) -> None:
        atomic_write_json(self.path, self.summary)
        log.info("Wrote %s (status: %s)", self.path, self.summary["status"])


def _finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value)
