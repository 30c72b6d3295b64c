"""Epoch wall-clock time and peak memory, logged per epoch."""

from __future__ import annotations

import resource
import sys
import time

import pytorch_lightning as pl
import torch


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024**2 if sys.platform == "darwin" else 1024)


def peak_gpu_mb() -> float | None:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


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
