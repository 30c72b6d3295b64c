"""Train/eval modes of optimizers that have them (Schedule-Free) around evaluation and checkpoints."""

from __future__ import annotations

import pytorch_lightning as pl

from lightning_modules.callbacks.hooks import skip_hook, unwrap_save_checkpoint, wrap_save_checkpoint
from lightning_modules.optim import eval_mode, has_modes, set_mode


class OptimizerModes(pl.Callback):
    """Keeps a Schedule-Free optimizer's mode right (a no-op for optimizers without modes).

    Schedule-Free keeps two points: training steps need the parameters at ``y`` (``train()``),
    evaluation and saved weights need the average ``x`` (``eval()``). This callback calls
    ``eval()`` before every validation (the sanity check too) and test, and ``train()`` before the
    next training step (a flag check per step otherwise); it wraps ``trainer.save_checkpoint`` so
    that *every* checkpoint (epoch end, every N steps, SLURM's requeue checkpoint, a manual save)
    is written in eval mode, then switches back. A checkpoint therefore holds the evaluation
    weights (``load_from_checkpoint`` gives the model to evaluate) and the optimizer in eval mode;
    a resumed run calls ``train()`` on it, the same operation the uninterrupted run did right after
    saving (or before its next step), so it continues exactly.
    Fit ends in eval mode, so a test on the live model (no checkpoint) evaluates ``x`` too.

    Not optional: :meth:`StudyModule.configure_callbacks` adds it to every run.
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        wrap_save_checkpoint(trainer, lambda: eval_mode(trainer.optimizers))  # see callbacks/hooks.py

    def teardown(self, trainer, pl_module, stage: str) -> None:
        unwrap_save_checkpoint(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        if not any(has_modes(opt) for opt in trainer.optimizers):  # AdamW, SGD, ...: nothing to switch,
            skip_hook(self, "on_train_batch_start")  # so no per-step hook

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        set_mode(trainer.optimizers, train=True)  # a flag check when already in train mode

    def on_validation_start(self, trainer, pl_module) -> None:
        set_mode(trainer.optimizers, train=False)

    def on_fit_end(self, trainer, pl_module) -> None:
        set_mode(trainer.optimizers, train=False)

    def on_test_start(self, trainer, pl_module) -> None:
        set_mode(trainer.optimizers, train=False)
