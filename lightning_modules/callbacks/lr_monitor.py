"""Lightning's LearningRateMonitor, on in every run (not only with a schedule), and harmless when the
run has no logger (``~logger``), where Lightning's own raises."""

from __future__ import annotations

from pytorch_lightning.callbacks import LearningRateMonitor as _LearningRateMonitor


class LearningRateMonitor(_LearningRateMonitor):
    """Logs ``lr-<Optimizer>`` (and momentum with ``log_momentum``) every logging step; does nothing
    without a logger."""

    _active = True

    def on_train_start(self, trainer, *args, **kwargs) -> None:
        self._active = bool(trainer.loggers)
        if self._active:
            super().on_train_start(trainer, *args, **kwargs)
            if trainer.fit_loop.epoch_loop.batch_progress.current.completed > 0:
                # resumed inside an epoch: the epoch's row gets the rate even with no step left to run
                self._extract_stats(trainer, "any")

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        if self._active:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args, **kwargs) -> None:
        if self._active:
            super().on_train_epoch_start(trainer, *args, **kwargs)
