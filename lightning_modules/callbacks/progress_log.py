"""Progress as log lines where no terminal shows a live progress bar (``python train.py > run.log``,
SLURM, nohup): one line every ``every_n_steps`` training steps and one per epoch, to the console and
``train.log``: epoch, step, the train/val metrics, seconds, and an estimate of the time left."""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch

from lightning_modules.callbacks.hooks import skip_hook
from lmvit.settings import NON_NEGATIVE_INT, Checked, one_of

log = logging.getLogger("lmvit.progress")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _number(value: Any) -> str:
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return f"{value:.4g}"


class ProgressLog(Checked, pl.Callback):
    """``when``: ``auto`` (only when stdout is not a terminal: a live bar shows the rest), ``always``
    or ``never``. ``every_n_steps``: a line every N training steps (0: epoch lines only); reading the
    loss for it is the only device sync it adds, once every N steps."""

    SETTINGS = {"every_n_steps": NON_NEGATIVE_INT, "when": one_of(("auto", "always", "never"))}
    PREFIX = "callbacks.progress_log."

    def __init__(self, every_n_steps: int = 100, when: str = "auto") -> None:
        self.check_settings({"every_n_steps": every_n_steps, "when": when})
        self.every = max(0, int(every_n_steps))
        self.when = when
        self.enabled = False
        self._fit_start = self._epoch_start = 0.0
        self._start_step = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        tty = sys.stdout.isatty()
        self.enabled = trainer.is_global_zero and (self.when == "always" or (self.when == "auto" and not tty))
        if not self.enabled or not self.every:  # no step lines: no per-step hook (Lightning skips None)
            skip_hook(self, "on_train_batch_end")

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()
        self._start_step = trainer.global_step  # a resumed run estimates from its own pace
        if self.enabled:
            log.info(
                "Training: %d epochs of %s batches (%d optimizer steps in all)",
                trainer.max_epochs,
                trainer.num_training_batches,
                self._total_steps(trainer),
            )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()

    def _total_steps(self, trainer) -> int:
        try:
            return int(trainer.estimated_stepping_batches)
        except Exception:  # noqa: BLE001 - an unsized loader: no estimate
            return 0

    def _eta(self, trainer) -> str:
        done = trainer.global_step - self._start_step
        left = self._total_steps(trainer) - trainer.global_step
        if done <= 0 or left < 0:
            return "?"
        return _duration((time.perf_counter() - self._fit_start) / done * left)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.enabled or not self.every or trainer.global_step % self.every:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        seconds = time.perf_counter() - self._epoch_start
        log.info(
            "epoch %d/%d  batch %d/%s  step %d  train/loss_step %s  %.1f s into the epoch  ETA %s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            batch_idx + 1,
            trainer.num_training_batches,
            trainer.global_step,
            _number(loss) if loss is not None else "?",
            seconds,
            self._eta(trainer),
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # called after the epoch's validation: its train and val metrics are all in callback_metrics
        if self.enabled:
            self._epoch_line(trainer)

    def _epoch_line(self, trainer) -> None:
        metrics = {
            k: v
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("train/", "val/")) and not k.endswith("_step")
        }
        text = "  ".join(f"{k} {_number(v)}" for k, v in sorted(metrics.items()))
        log.info(
            "epoch %d/%d done  step %d  %s  %.1f s  elapsed %s  ETA %s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            trainer.global_step,
            text,
            time.perf_counter() - self._epoch_start,
            _duration(time.perf_counter() - self._fit_start),
            self._eta(trainer),
        )
