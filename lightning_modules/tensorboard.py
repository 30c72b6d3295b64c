"""TensorBoard extras: a custom-scalars layout (train beside validation) and an HParams fix.

* :class:`ScalarLayout` writes, once per run, a layout for TensorBoard's CUSTOM SCALARS tab:
  one chart per metric holding its train, validation and test curves (e.g. ``train/loss`` and
  ``val/loss`` together), plus time, memory and learning-rate charts.
* :class:`TensorBoardLogger` is Lightning's logger, except that ``log_hyperparams(..., metrics=...)``
  writes each run's session (hyperparameters + status) but no per-run *experiment* summary.
  TensorBoard's HParams tab takes the first experiment summary it finds as the column list of
  the whole log folder, so runs with other hyperparameters or metrics (an LSTM beside a ViT, a
  preset beside a plain run) lost their columns. Without it, TensorBoard builds the experiment
  from the union of all runs' sessions and scalar tags.
"""

from __future__ import annotations

import re
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.logger import _convert_params, _flatten_dict
from pytorch_lightning.loggers import TensorBoardLogger as _LightningTensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

STAGES = ("train", "val", "test")


def scalar_layout(metrics: list[str]) -> dict[str, dict[str, list[Any]]]:
    """Layout for ``SummaryWriter.add_custom_scalars``; chart tags are regular expressions."""
    stages = "|".join(STAGES)
    charts = {name: ["Multiline", [rf"^({stages})/{re.escape(name)}$"]] for name in metrics}
    return {
        "train vs val": charts,
        "steps": {"train loss per step": ["Multiline", [r"^train/loss_step$"]]},
        "time": {
            "seconds per epoch": ["Multiline", [r"^time/epoch_s$"]],
            "cumulative train seconds": ["Multiline", [r"^time/train_s$"]],
        },
        "memory": {"peak memory (MB)": ["Multiline", [r"^memory/"]]},
        "learning rate": {"lr": ["Multiline", [r"^lr-"]]},
    }


class ScalarLayout(pl.Callback):
    """Write the custom-scalars layout for ``loss`` and the monitored metric's name
    (``monitor="val/acc"`` -> ``acc``) plus ``extra_metrics``, once, at the start of fit."""

    def __init__(self, monitor: str, extra_metrics: list[str] | None = None) -> None:
        name = monitor.split("/", 1)[-1]
        self.metrics = list(dict.fromkeys(["loss", name, *(extra_metrics or [])]))

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        layout = scalar_layout(self.metrics)
        for logger in trainer.loggers:
            if isinstance(logger, _LightningTensorBoardLogger):
                logger.experiment.add_custom_scalars(layout)


class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's TensorBoard logger writing HParams sessions without an experiment summary."""

    @rank_zero_only
    def log_hyperparams(self, params, metrics: dict[str, Any] | None = None, step: int | None = None) -> None:
        super().log_hyperparams(params, metrics=None, step=step)  # hparams.yaml; no summaries
        if not metrics:
            return
        from torch.utils.tensorboard.summary import hparams

        self.log_metrics(metrics, step)
        flat = self._sanitize_params(_flatten_dict(_convert_params(params)))
        _experiment, session_start, session_end = hparams(flat, metrics)
        writer = self.experiment._get_file_writer()
        writer.add_summary(session_start, step)
        writer.add_summary(session_end, step)
