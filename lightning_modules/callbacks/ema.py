"""An exponential moving average (EMA) of the net's weights, evaluated as its own metrics."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lightning_modules.callbacks.hooks import skip_hook
from lmvit.settings import Checked, is_number


@contextmanager
def _uncompiled(net: nn.Module):
    """``net`` without its ``nn.Module.compile`` wrapper for the time of a copy (a deep copy of
    the wrapper would still call the original net)."""
    compiled = net.__dict__.get("_compiled_call_impl")
    net._compiled_call_impl = None
    try:
        yield net
    finally:
        net._compiled_call_impl = compiled


class EMA(Checked, pl.Callback):
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` of ``pl_module.net`` after every
    optimizer step (starting from the weights at the start of fit; buffers averaged too) and
    evaluates that copy on every validation batch, logged beside the net's own metrics with the
    suffix ``_ema`` (``val/acc_ema``, ``val/loss_ema``; ``val/ppl_ema`` for the LSTM).

    The average is ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(decay)``;
    it is saved in every checkpoint (the callback's state) and restored on resume, so a resumed
    run ends with the same average as an uninterrupted one. The training weights are never
    touched: checkpoints' ``state_dict`` and ``val/acc`` stay the raw net's. :meth:`net_state_dict`
    reads the averaged weights out of a checkpoint (load them into the net to use them).

    ``decay=null`` turns the callback off (no metric, no state): ``callbacks.ema.decay=0.9995``
    turns it on. The average's horizon is about ``1 / (1 - decay)`` optimizer steps.

    Not Lightning's ``EMAWeightAveraging``: that callback swaps the average in for validation, so
    the net's own ``val/acc`` would no longer be measured; here both are, side by side (and
    ``monitor.metric=val/acc_ema`` picks the best checkpoint by the average's accuracy).
    """

    SUFFIX = "_ema"
    SETTINGS = {"decay": (lambda v: is_number(v) and 0 < v < 1, "null (off) or a number in (0, 1)")}
    PREFIX = "callbacks.ema."

    def __init__(self, decay: float | None = None) -> None:
        self.check_settings({"decay": decay})
        self.decay = decay
        if decay is None:  # off: no per-batch hooks at all (Lightning skips a None hook)
            skip_hook(self, "on_train_batch_end", "on_validation_batch_end")
        self.average: AveragedModel | None = None
        self._pending: dict[str, Any] | None = None  # a checkpoint's state loaded before fit starts
        self._updated_at = -1

    @property
    def enabled(self) -> bool:
        return self.decay is not None

    # -- the average -------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.enabled:
            pl_module.add_shadow_metrics(self.SUFFIX, stages=("val",))

    def on_fit_start(self, trainer, pl_module) -> None:
        if not self.enabled:
            return
        with _uncompiled(pl_module.net) as net:
            self.average = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
        self.average.requires_grad_(False)
        self.average.update_parameters(pl_module.net)  # the first update copies: ema_0 = weights_0
        self._updated_at = trainer.global_step
        if self._pending is not None:  # resumed: the checkpoint's average replaces the fresh one
            self._load(self._pending)
            self._pending = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # once per optimizer step (global_step counts them; accumulation steps leave it unchanged)
        if self.average is not None and trainer.global_step != self._updated_at:
            self.average.update_parameters(pl_module.net)
            self._updated_at = trainer.global_step

    # -- evaluation ----------------------------------------------------------------------------
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.average is None:  # validate() without fit, or off
            return
        self.average.eval()
        with torch.no_grad():
            pl_module.step(batch, "val", net=self.average.module, suffix=self.SUFFIX)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.average is None:
            return {}
        return {"decay": self.decay, "updated_at": self._updated_at, "average": self.average.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.enabled or not state_dict:
            return
        if self.average is None:  # Lightning restores callbacks before or after on_fit_start
            self._pending = state_dict
        else:
            self._load(state_dict)

    def _load(self, state: dict[str, Any]) -> None:
        device = next(self.average.parameters()).device
        self.average.load_state_dict({k: v.to(device) for k, v in state["average"].items()})
        self._updated_at = state["updated_at"]

    @staticmethod
    def net_state_dict(checkpoint: dict[str, Any] | str) -> dict[str, torch.Tensor]:
        """The averaged weights in a checkpoint (dict or path), keyed as the net's ``state_dict``:
        ``model.net.load_state_dict(EMA.net_state_dict("last.ckpt"))``."""
        if not isinstance(checkpoint, dict):
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        for key, state in checkpoint.get("callbacks", {}).items():
            if key.split("{")[0] == EMA.__qualname__ and state.get("average"):
                prefix = "module."
                return {k[len(prefix) :]: v for k, v in state["average"].items() if k.startswith(prefix)}
        raise KeyError("no EMA average in this checkpoint: train with callbacks.ema.decay=<decay>")
