"""The one place lmvit leans on Lightning's internals (tests/test_lightning_internals.py checks each
against the installed Lightning, and fails loudly if a release changes one):

1. **Skipping a per-batch hook.** Lightning calls every per-batch hook of every callback at every
   step through ``pytorch_lightning.trainer.call._call_callback_hooks`` (a profiler context and the
   callback's ``state_key`` per call, ~3-10 us each), including the no-op hooks a callback inherits
   from ``pl.Callback``, and it skips a hook that is not callable (``fn = getattr(callback,
   hook_name)``; ``if callable(fn)``). :func:`skip_hook` sets hooks to ``None`` on the callback
   instance (the class is untouched); it is the only way lmvit switches a hook off:
   :func:`skip_inherited_batch_hooks` for the inherited no-op ones (train.py, every callback), and a
   callback that has nothing to do per step in a run (EMA off, no Schedule-Free optimizer, ...).
   Only per-batch hooks: Lightning calls them through ``_call_callback_hooks`` alone.
2. **The logging steps.** ``trainer._logger_connector.should_update_logs``: whether Lightning writes
   step values to the loggers after this step (:func:`logging_step`), so a module logs per-step
   values only then.
3. **Every checkpoint goes through** ``Trainer.save_checkpoint(filepath, weights_only,
   storage_options)`` (``ModelCheckpoint``, SLURM's requeue checkpoint, a manual save):
   :func:`wrap_save_checkpoint` wraps it on the Trainer instance for a fit (Schedule-Free's eval
   mode, callbacks/optimizer_mode.py) and :func:`unwrap_save_checkpoint` restores the method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import pytorch_lightning as pl

BATCH_HOOKS = (
    "on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
    "on_before_zero_grad", "on_before_optimizer_step", "on_validation_batch_start", "on_validation_batch_end",
    "on_test_batch_start", "on_test_batch_end", "on_predict_batch_start", "on_predict_batch_end",
)  # fmt: skip
TRAIN_STEP_HOOKS = BATCH_HOOKS[:6]


def skip_hook(callback: pl.Callback, *names: str) -> None:
    """Lightning no longer calls these per-batch hooks of ``callback`` (this instance only)."""
    for name in names:
        if name not in BATCH_HOOKS:
            raise ValueError(f"{name} is not a per-batch hook: Lightning may call it another way")
        setattr(callback, name, None)


def skip_inherited_batch_hooks(callbacks: Iterable[pl.Callback]) -> list[pl.Callback]:
    """The same callbacks, each with its inherited no-op per-batch hooks skipped."""
    callbacks = list(callbacks)
    for callback in callbacks:
        for name in BATCH_HOOKS:
            inherited = getattr(type(callback), name, None) is getattr(pl.Callback, name)
            if inherited and name not in vars(callback):
                skip_hook(callback, name)
    return callbacks


def logging_step(trainer: pl.Trainer | None) -> bool:
    """Whether Lightning writes step values to the loggers after this step (every
    ``trainer.log_every_n_steps`` steps, and when the run stops); True outside a Trainer."""
    connector = getattr(trainer, "_logger_connector", None)
    if connector is None:
        return True
    return bool(connector.should_update_logs or trainer.fast_dev_run)


def wrap_save_checkpoint(trainer: pl.Trainer, around: Callable[[], AbstractContextManager]) -> None:
    """Every checkpoint of ``trainer`` is written inside ``around()`` (once per Trainer)."""
    if getattr(trainer.save_checkpoint, "_lmvit_wrapped", False):
        return
    save_checkpoint = trainer.save_checkpoint

    def save_within(*args, **kwargs):
        with around():
            return save_checkpoint(*args, **kwargs)

    save_within._lmvit_wrapped = True
    trainer.save_checkpoint = save_within


def unwrap_save_checkpoint(trainer: pl.Trainer) -> None:
    if getattr(trainer.save_checkpoint, "_lmvit_wrapped", False):
        del trainer.save_checkpoint  # the Trainer's own method again
