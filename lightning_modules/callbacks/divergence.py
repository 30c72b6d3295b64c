"""Stop at the first non-finite training loss, before a checkpoint can store it."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from lmvit.errors import DivergenceError
from lmvit.settings import POSITIVE_INT, Checked


class FiniteLossGuard(Checked, pl.Callback):
    """Stops the run at the first non-finite training loss, before a checkpoint can store it.

    Every step keeps a reference to the step's (detached) loss with its step, epoch and batch
    numbers: no tensor work and no device sync on the step's path. The pending losses are checked
    together (one ``isfinite`` and one device read) every ``check_every_n_steps`` steps, at each
    epoch end, and before every checkpoint is written, so a checkpoint never holds a diverged model
    whatever N, and the error names the first bad step. N=1 (the default) stops at once; on a GPU a
    larger N (e.g. 50) saves the sync per step. ``metrics.json`` records the run as ``diverged``.
    """

    SETTINGS = {"check_every_n_steps": POSITIVE_INT}
    PREFIX = "callbacks.finite_loss."

    def __init__(self, check_every_n_steps: int = 1) -> None:
        self.check_settings({"check_every_n_steps": check_every_n_steps})
        self.every = check_every_n_steps
        self._pending: list[tuple[torch.Tensor, int, int, int]] = []  # (loss, step, epoch, batch), unchecked

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        self._pending.append((loss.detach(), trainer.global_step, trainer.current_epoch, batch_idx))
        if trainer.global_step % self.every == 0 or len(self._pending) >= self.every:
            self.check()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.check()  # raising here stops the checkpoint from being written

    def check(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if len(pending) == 1:
            if bool(torch.isfinite(pending[0][0]).all()):  # the one device read
                return
            first = 0
        else:
            finite = torch.isfinite(torch.stack([loss.reshape(()).float() for loss, *_ in pending]))
            if bool(finite.all()):  # the one device read
                return
            first = finite.tolist().index(False)
        loss, step, epoch, batch = pending[first]
        raise DivergenceError(
            f"train/loss is {float(loss)} at step {step} (epoch {epoch}, batch {batch}): "
            "the run diverged. Lower optimizer.lr (or clip gradients with "
            "trainer.gradient_clip_val); the last good checkpoint is kept."
        )
