"""Progress as log lines where no terminal shows a live progress bar (``python train.py > run.log``,
SLURM, nohup): one line every ``every_n_steps`` training steps and one per epoch, to the console and
``train.log``: epoch, step, the train/val metrics, seconds, and an estimate of the time left.

With or without a terminal, a run says when it starts how many epochs and steps it will train, and
after ``estimate_after_steps`` steps (past the first ``WARMUP_STEPS``) how long they all take at
that speed (with the quick version, ``python train.py debug=fast``, when that is more than a few
minutes)."""

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


def _spoken(seconds: float) -> str:
    """``1 h 45 min``, ``12 min``, ``40 s``: a duration as people say it."""
    minutes = int(round(seconds / 60))
    if seconds < 60:
        return f"{int(round(seconds))} s"
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


QUICK_VERSION = "python train.py debug=fast"  # conf/debug/fast.yaml: a few batches of everything
QUICK_HINT_AFTER = 300.0  # seconds: a run longer than this names the quick version
WARMUP_STEPS = 5  # the first steps (loader workers starting, first allocations) are left out of the estimate


def _number(value: Any) -> str:
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return f"{value:.4g}"


class ProgressLog(Checked, pl.Callback):
    """``when``: ``auto`` (only when stdout is not a terminal: a live bar shows the rest), ``always``
    or ``never``. ``every_n_steps``: a line every N training steps (0: epoch lines only); reading the
    loss for it is the only device sync it adds, once every N steps."""

    SETTINGS = {
        "every_n_steps": NON_NEGATIVE_INT,
        "when": one_of(("auto", "always", "never")),
        "estimate_after_steps": NON_NEGATIVE_INT,
    }
    PREFIX = "callbacks.progress_log."

    def __init__(self, every_n_steps: int = 100, when: str = "auto", estimate_after_steps: int = 50) -> None:
        self.check_settings(
            {"every_n_steps": every_n_steps, "when": when, "estimate_after_steps": estimate_after_steps}
        )
        self.every = max(0, int(every_n_steps))
        self.when = when
        self.estimate_after = max(0, int(estimate_after_steps))
        self.enabled = False
        self.estimated = True  # until a fit starts on rank zero
        self._fit_start = self._epoch_start = 0.0
        self._estimate_from = (0, 0.0)
        self._start_step = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        tty = sys.stdout.isatty()
        self.enabled = trainer.is_global_zero and (self.when == "always" or (self.when == "auto" and not tty))
        if stage == "fit" and trainer.is_global_zero and self.when != "never" and self.estimate_after:
            self.estimated = False  # the estimate line needs the per-step hook until it is written
        elif not self.enabled or not self.every:  # no step lines: no per-step hook (Lightning skips None)
            skip_hook(self, "on_train_batch_end")

    def on_train_start(self, trainer, pl_module) -> None:
        # a run resumed inside an epoch re-enters it without on_train_epoch_start: its epoch line
        # counts this process's part of that epoch
        self._fit_start = self._epoch_start = time.perf_counter()
        self._start_step = trainer.global_step  # a resumed run estimates from its own pace
        self._estimate_from = (self._start_step + WARMUP_STEPS, 0.0)  # (step, time) the estimate counts from
        if self._total_steps(trainer) - self._start_step <= WARMUP_STEPS + self.estimate_after:  # over before
            self.estimated = True
        if self.enabled or not self.estimated:
            log.info(
                "Training: %d epochs of %s batches (%d optimizer steps in all)%s",
                trainer.max_epochs,
                trainer.num_training_batches,
                self._total_steps(trainer),
                ""
                if self.estimated
                else f"; how long that takes here follows after {WARMUP_STEPS + self.estimate_after} steps",
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

    def _estimate(self, trainer) -> None:
        """One line: the whole run's time at the speed of its first steps."""
        self.estimated = True
        if not (self.enabled and self.every):
            skip_hook(self, "on_train_batch_end")  # nothing more to do per step
        step, since = self._estimate_from
        done = trainer.global_step - step
        total, left = self._total_steps(trainer), self._total_steps(trainer) - trainer.global_step
        if done <= 0 or total <= 0:
            return
        per_step = (time.perf_counter() - since) / done
        seconds = per_step * left
        more = "" if seconds < QUICK_HINT_AFTER else f"; a first result in about a minute: {QUICK_VERSION}"
        log.info(
            "%d epochs (%d steps), about %s %sat the current speed (%.2f s a step)%s",
            trainer.max_epochs,
            total,
            _spoken(seconds),
            "more " if self._start_step else "",
            per_step,
            more,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.estimated:
            if trainer.global_step == self._estimate_from[0]:
                self._estimate_from = (trainer.global_step, time.perf_counter())
            elif trainer.global_step - self._estimate_from[0] >= self.estimate_after:
                self._estimate(trainer)
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
