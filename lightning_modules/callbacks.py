"""Callbacks: epoch timing and memory, and the run summary (``metrics.json``)."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torchmetrics import Metric

log = logging.getLogger(__name__)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    return str(obj)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024**2 if sys.platform == "darwin" else 1024)


def peak_gpu_mb() -> float | None:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


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


class EpochTimer(pl.Callback):
    """Logs ``time/epoch_s`` (wall-clock of the epoch, validation included), ``time/train_s``
    (cumulative), and peak memory: ``memory/peak_gpu_mb`` on CUDA, ``memory/peak_rss_mb`` always."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._start is None:
            return
        seconds = time.perf_counter() - self._start
        self.total += seconds
        # under DDP each process measures its own; log the slowest / largest (max over processes)
        sync = {"on_epoch": True, "sync_dist": True, "reduce_fx": "max"}
        pl_module.log("time/epoch_s", seconds, **sync)
        pl_module.log("time/train_s", self.total, **sync)
        pl_module.log("memory/peak_rss_mb", peak_rss_mb(), **sync)
        gpu = peak_gpu_mb()
        if gpu is not None:
            pl_module.log("memory/peak_gpu_mb", gpu, **sync)

    def state_dict(self) -> dict[str, float]:
        return {"total": self.total}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.total = state_dict["total"]


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
            "history": self.history,
        }

    # -- collection ------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        counts = getattr(pl_module, "parameter_counts", None)
        self.summary["params"] = counts() if counts else {}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"params/{k}": v for k, v in self.summary["params"].items()}, step=0)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = _scalars(trainer.callback_metrics)
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        row.update({k: v for k, v in metrics.items() if not k.endswith("_step")})
        # resumed runs re-enter an epoch: keep one row per epoch
        self.history[:] = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]
        self.summary["epochs"] = trainer.current_epoch + 1
        self.summary["final"] = {
            k: v for k, v in row.items() if k.split("/")[0] in ("train", "val")
        }
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
            self.history[:] = restored
            self._restored_history = None

    # -- output ----------------------------------------------------------------------------
    def fail(self, exception: BaseException, status: str | None = None) -> None:
        """Record a failure (idempotent: the first error wins) and write the file."""
        if self.summary["status"] in ("failed", "diverged", "interrupted"):
            return
        if status is None:
            if isinstance(exception, DivergenceError):
                status = "diverged"
            elif isinstance(exception, KeyboardInterrupt):
                status = "interrupted"
            else:
                status = "failed"
        self.summary["status"] = status
        self.summary["error"] = {
            "type": type(exception).__name__,
            "message": str(exception),
            "traceback": "".join(traceback.format_exception(exception))[-4000:],
        }
        self.write()

    @rank_zero_only  # one metrics.json per run: under DDP only global rank 0 writes, failures included
    def write(self) -> None:
        atomic_write_json(self.path, self.summary)
        log.info("Wrote %s (status: %s)", self.path, self.summary["status"])


def _finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value)


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


class FiniteLossGuard(pl.Callback):
    """Stops the run at the first non-finite training loss, before a checkpoint can store it.

    Every step records, on the device and without a sync, the first step whose loss was NaN or
    infinite; the record is read (one device sync) every ``check_every_n_steps`` steps, at each
    epoch end, and before every checkpoint is written, so a checkpoint never holds a diverged model
    whatever N. N=1 (the default) stops at once; on a GPU a larger N (e.g. 50) saves the sync per
    step. ``metrics.json`` records the run as ``diverged``.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        self.every = max(1, check_every_n_steps)
        self._first_bad: torch.Tensor | None = None  # [step, epoch, batch, loss] of the first bad loss

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float()
        record = torch.stack([
            torch.full_like(loss, trainer.global_step), torch.full_like(loss, trainer.current_epoch),
            torch.full_like(loss, batch_idx), loss,
        ])
        bad = ~torch.isfinite(loss)
        if self._first_bad is None:
            self._first_bad = torch.full_like(record, -1.0)
        first_seen = bad & (self._first_bad[0] < 0)
        self._first_bad = torch.where(first_seen, record, self._first_bad)
        if trainer.global_step % self.every == 0:
            self.check()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.check()  # raising here stops the checkpoint from being written

    def check(self) -> None:
        if self._first_bad is None:
            return
        step, epoch, batch, loss = self._first_bad.tolist()
        if step >= 0:
            raise DivergenceError(
                f"train/loss is {loss} at step {int(step)} (epoch {int(epoch)}, batch {int(batch)}): "
                "the run diverged. Lower optimizer.lr (or clip gradients with "
                "trainer.gradient_clip_val); the last good checkpoint is kept."
            )


class ResumeState(pl.Callback):
    """Makes a resumed run continue exactly where it stopped.

    Saves in every checkpoint the RNG states (torch, CUDA, numpy, random) and, when the checkpoint
    is taken mid-epoch, the states of the LightningModule's ``train_*`` torchmetrics (the
    accumulated loss and accuracy of the epoch so far), which Lightning does not save itself.
    """

    KEY = "lmvit_resume_state"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state_to_torch(np.random.get_state()),
            "random": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "train_metrics": {},
        }
        processed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if 0 < processed < trainer.num_training_batches:  # mid-epoch
            for name, metric in _train_metrics(pl_module):
                state["train_metrics"][name] = {
                    k: _clone(getattr(metric, k)) for k in metric._defaults
                }
        checkpoint[self.KEY] = state

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(self.KEY)
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state["random"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        metrics = dict(_train_metrics(pl_module))
        for name, values in state["train_metrics"].items():
            metric = metrics[name]
            for k, v in values.items():
                current = getattr(metric, k)
                setattr(metric, k, v.to(current.device) if isinstance(v, torch.Tensor) else v)
            metric._update_count = max(metric._update_count, 1)
            metric._computed = None


def _numpy_state_to_torch(state: tuple) -> tuple:
    """numpy's RNG state with its key array as a tensor (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached))


def _train_metrics(pl_module) -> list[tuple[str, Any]]:
    return [
        (name, m)
        for name, m in pl_module.named_modules()
        if isinstance(m, Metric) and name.split(".")[-1].startswith("train")
    ]


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value
