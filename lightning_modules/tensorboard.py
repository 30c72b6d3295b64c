"""TensorBoard extras: a custom-scalars layout (train beside validation) and an HParams fix.

* :class:`ScalarLayout` writes, once per run, a layout for TensorBoard's CUSTOM SCALARS tab:
  one chart per metric holding its train, validation and test curves (e.g. ``train/loss`` and
  ``val/loss`` together), plus time, memory and learning-rate charts.
* :class:`TensorBoardLogger` is Lightning's logger, except for the HParams tab:

  - the first ``log_hyperparams`` call (``train.py`` makes it before fit, with the run's curated
    hyperparameters) starts the run's HParams *session*, so a run shows in the table while it is
    running; ``finalize`` ends it with its status (success, failure for a failed or diverged run,
    aborted for an interrupted one); the metric columns are the ``hparam/*`` scalars ``train.py``
    logs at the end;
  - no per-run *experiment* summary is written: TensorBoard takes the first one it finds as the
    column list of the whole log folder, so runs with other hyperparameters or metrics (an LSTM
    beside a ViT, a preset beside a plain run) lost their columns. Without it, TensorBoard builds the
    experiment from the union of all runs' sessions and scalar tags (columns that differ between
    runs first, then by name).
"""

from __future__ import annotations

import re
import time
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


# Lightning's finalize(status) -> the HParams session status
SESSION_STATUS = {"success": "STATUS_SUCCESS", "failed": "STATUS_FAILURE", "interrupted": "STATUS_ABORTED"}


def session_end_summary(status: str):
    """An HParams ``SessionEndInfo`` summary with ``status`` (a ``STATUS_*`` name)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    info = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(status), end_time_secs=time.time())
    content = plugin_data_pb2.HParamsPluginData(session_end_info=info, version=0)
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag="_hparams_/session_end_info", metadata=metadata)])


class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's TensorBoard logger; HParams sessions start with the run and end with its status."""

    _session_started = False

    def __init__(self, *args: Any, default_hp_metric: bool = False, **kwargs: Any) -> None:
        # Lightning's hp_metric placeholder would write a whole session (ended "success") at once
        super().__init__(*args, default_hp_metric=default_hp_metric, **kwargs)

    @rank_zero_only
    def log_hyperparams(self, params, metrics: dict[str, Any] | None = None, step: int | None = None) -> None:
        super().log_hyperparams(params, metrics=None, step=step)  # hparams.yaml; no summaries
        if metrics:
            self.log_metrics(metrics, step)
        if self._session_started:  # later calls (Lightning's own, with the module's hparams) keep the session
            return
        from torch.utils.tensorboard.summary import hparams

        flat = self._sanitize_params(_flatten_dict(_convert_params(params)))
        _experiment, session_start, _end = hparams(flat, {})
        self.experiment._get_file_writer().add_summary(session_start, step)
        self._session_started = True

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._session_started and self._experiment is not None:
            name = SESSION_STATUS.get(status, "STATUS_UNKNOWN")
            self.experiment._get_file_writer().add_summary(session_end_summary(name))
        super().finalize(status)
