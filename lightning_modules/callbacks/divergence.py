"""Stop at the first non-finite training loss, before a checkpoint can store it."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from lmvit.errors import DivergenceError


class FiniteLossGuard(pl.Callback):
    """Stops the run at the first non-finite training loss, before a checkpoint can store it.

    Every step records, on the device and without a sync, the first step whose loss was NaN or
    infinite; the record is read (one device sync) every ``check_every_n_steps`` steps, at each
    epoch end, and before every checkpoint is written, so a checkpoint never holds a diverged model
    whatever N. N=1 (the default) stops at once; on a GPU a larger N (e.g. 50) saves the sync per
    step. ``metrics.json`` records the run as ``diverged``.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        self.every = max(1, check_every_n_steps)
        self._first_bad: torch.Tensor | None = None  # [step, epoch, batch, loss] of the first bad loss

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float()
        record = torch.stack([
            torch.full_like(loss, trainer.global_step), torch.full_like(loss, trainer.current_epoch),
            torch.full_like(loss, batch_idx), loss,
        ])
        bad = ~torch.isfinite(loss)
        if self._first_bad is None:
            self._first_bad = torch.full_like(record, -1.0)
        first_seen = bad & (self._first_bad[0] < 0)
        self._first_bad = torch.where(first_seen, record, self._first_bad)
        if trainer.global_step % self.every == 0:
            self.check()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.check()  # raising here stops the checkpoint from being written

    def check(self) -> None:
        if self._first_bad is None:
            return
        step, epoch, batch, loss = self._first_bad.tolist()
        if step >= 0:
            raise DivergenceError(
                f"train/loss is {loss} at step {int(step)} (epoch {int(epoch)}, batch {int(batch)}): "
                "the run diverged. Lower optimizer.lr (or clip gradients with "
                "trainer.gradient_clip_val); the last good checkpoint is kept."
            )
