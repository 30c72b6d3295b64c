"""Epoch wall-clock time and peak memory, logged per epoch."""

from __future__ import annotations

import os
import platform
import resource
import socket
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


def load_1m() -> float | None:
    """The machine's 1-minute load average (runnable processes, all users), None where unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name with its family/model and bf16 instructions (``/proc/cpuinfo``:
    :func:`lmvit.hardware.cpu_name`), else ``platform.processor()``."""
    from lmvit.hardware import cpu_name

    return cpu_name() or platform.processor() or platform.machine() or "unknown CPU"


def device_name() -> str:
    """What trains: the CUDA device's name when CUDA is in use, else the CPU model."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.get_device_name()
    return cpu_model()


def machine_state(load_at_start: float | None = None) -> dict[str, float | str | None]:
    """The machine an epoch ran on, for ``metrics.json``'s history (``analysis/timing.py`` decides
    from it whether the epoch's time was measured alone): ``time/load_1m`` (the 1-minute load
    average, mean of the samples at the epoch's start and end), ``time/cores`` (the machine's
    cores: the load average counts all of them), ``time/cpus`` (those this process may use),
    ``time/device``, ``time/host`` and ``time/end_unix`` (when the epoch ended). Under ``time/``:
    the context of the epoch's time, left out wherever timings are (tests comparing two runs)."""
    end = load_1m()
    samples = [x for x in (load_at_start, end) if x is not None]
    return {
        "time/load_1m": sum(samples) / len(samples) if samples else None,
        "time/cores": os.cpu_count(),
        "time/cpus": usable_cpus(),
        "time/device": device_name(),
        "time/host": socket.gethostname(),
        "time/end_unix": time.time(),
    }


class EpochTimer(pl.Callback):
    """Logs ``time/epoch_s`` (wall-clock of the epoch, validation included), ``time/train_s``
    (cumulative), and peak memory: ``memory/peak_gpu_mb`` on CUDA, ``memory/peak_rss_mb`` always."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start: float | None = None
        self._carried: float | None = None  # seconds of the current epoch spent before a resume

    def on_train_start(self, trainer, pl_module) -> None:
        # a run resumed inside an epoch (or at its end, before on_train_epoch_end) re-enters it
        # without on_train_epoch_start: that epoch's time is the sum of its pieces, pauses excluded
        if self._carried is not None:
            self._start = time.perf_counter() - self._carried
            self._carried = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._start is None:
            return
        seconds = time.perf_counter() - self._start
        self.total += seconds
        self._start = None  # between epochs: nothing to carry into a checkpoint
        # under DDP each process measures its own; log the slowest / largest (max over processes)
        sync = {"on_epoch": True, "sync_dist": True, "reduce_fx": "max"}
        pl_module.log("time/epoch_s", seconds, **sync)
        pl_module.log("time/train_s", self.total, **sync)
        pl_module.log("memory/peak_rss_mb", peak_rss_mb(), **sync)
        gpu = peak_gpu_mb()
        if gpu is not None:
            pl_module.log("memory/peak_gpu_mb", gpu, **sync)

    def state_dict(self) -> dict[str, float]:
        # a checkpoint is taken inside an epoch (every N steps, or at validation end, before
        # on_train_epoch_end): it keeps the seconds the epoch has run so far
        elapsed = 0.0 if self._start is None else time.perf_counter() - self._start
        return {"total": self.total, "epoch_elapsed": elapsed}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.total = state_dict["total"]
        self._carried = state_dict.get("epoch_elapsed")
