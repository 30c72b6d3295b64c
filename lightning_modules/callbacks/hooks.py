"""Per-batch hooks a callback does not implement cost nothing.

Lightning calls every per-batch hook of every callback at every step (``_call_callback_hooks``:
a profiler context and the callback's ``state_key`` per call, ~3-10 us each), including the
no-op hooks a callback inherits from ``pl.Callback``. With a dozen callbacks and six hooks a
training step, that is most of what a run adds per step over bare Lightning. Lightning skips a
hook that is not callable, so :func:`skip_inherited_batch_hooks` sets the inherited no-op ones to
``None`` on each callback instance (the class is untouched; a hook the callback implements, or sets
itself, is kept). Only per-batch hooks: Lightning calls them through ``_call_callback_hooks`` alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytorch_lightning as pl

BATCH_HOOKS = (
    "on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
    "on_before_zero_grad", "on_before_optimizer_step", "on_validation_batch_start", "on_validation_batch_end",
    "on_test_batch_start", "on_test_batch_end", "on_predict_batch_start", "on_predict_batch_end",
)  # fmt: skip


def skip_inherited_batch_hooks(callbacks: Iterable[pl.Callback]) -> list[pl.Callback]:
    """The same callbacks, each with its inherited no-op per-batch hooks set to ``None``."""
    callbacks = list(callbacks)
    for callback in callbacks:
        for name in BATCH_HOOKS:
            inherited = getattr(type(callback), name, None) is getattr(pl.Callback, name)
            if inherited and name not in vars(callback):
                setattr(callback, name, None)
    return callbacks
