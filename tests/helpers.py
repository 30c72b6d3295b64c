"""Test-only callbacks, loaded into train.py subprocesses through Hydra overrides
(``+callbacks.kill._target_=tests.helpers.KillAtStep``)."""

import os
import signal

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    """SIGKILLs its own process after training step ``step`` (before that step's checkpoint:
    Lightning runs checkpoint callbacks last), like a node dying mid-epoch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
