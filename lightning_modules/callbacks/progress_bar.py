"""The live progress bar (Rich), with its per-step work bounded by its refresh rate."""

from __future__ import annotations

import sys
import time

from pytorch_lightning.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar``, redrawn ``refresh_rate`` times a second (Lightning's default,
    100, keeps a thread redrawing the terminal 100 times a second, which a small model's steps share
    their cores with), and whose metrics text (``get_metrics``: every progress-bar metric read to the
    host) is rebuilt at most as often as it is redrawn instead of after every batch. The bar itself
    advances every batch; epoch ends and validation ends update the metrics at once."""

    def __init__(self, refresh_rate: int = 10, when: str = "auto", **kwargs) -> None:
        if when not in ("auto", "always"):
            raise ValueError(f"callbacks.progress_bar.when={when!r}: must be auto or always")
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.when = when  # auto: only in a terminal (redirected output gets ProgressLog's lines)
        self._next_metrics_update = 0.0

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.when == "auto" and not sys.stdout.isatty():  # redirected (> run.log, SLURM): ProgressLog
            self.disable()  # writes the progress instead of the bar's last frames dumped into the file
        super().setup(trainer, pl_module, stage)

    def _update_metrics(self, trainer, pl_module) -> None:
        self._next_metrics_update = time.monotonic() + 1.0 / max(1, self.refresh_rate)
        super()._update_metrics(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # resumed mid-epoch
        self._update(self.train_progress_bar_id, batch_idx + 1)
        if time.monotonic() >= self._next_metrics_update:
            self._update_metrics(trainer, pl_module)
        self.refresh()
