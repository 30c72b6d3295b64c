"""The Lightning internals lmvit relies on (listed once, in lightning_modules/callbacks/hooks.py)
are still there in the installed Lightning, with the expected signature and behaviour: a release
that changes one fails here, by name, instead of silently slowing or breaking runs."""

from __future__ import annotations

import inspect

import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel
from pytorch_lightning.trainer import call
from pytorch_lightning.trainer.connectors.logger_connector.logger_connector import _LoggerConnector

from lightning_modules.callbacks.hooks import (
    BATCH_HOOKS,
    logging_step,
    skip_hook,
    unwrap_save_checkpoint,
    wrap_save_checkpoint,
)
from tests.helpers import quiet_trainer


def test_callback_hooks_are_dispatched_by_call_callback_hooks_which_skips_non_callables():
    params = list(inspect.signature(call._call_callback_hooks).parameters)
    assert params[:2] == ["trainer", "hook_name"], params
    source = inspect.getsource(call._call_callback_hooks)
    assert "getattr(callback, hook_name)" in source and "if callable(fn)" in source
    assert all(callable(getattr(pl.Callback, name)) for name in BATCH_HOOKS)


def test_a_skipped_hook_is_not_called_in_a_real_fit(tmp_path):
    class Counter(pl.Callback):
        calls = 0

        def on_train_batch_end(self, *args):
            type(self).calls += 1

    counter = Counter()
    skip_hook(counter, "on_train_batch_end")
    model = BoringModel()
    trainer = quiet_trainer(max_steps=3, callbacks=[counter], default_root_dir=tmp_path)
    trainer.fit(model)
    assert trainer.global_step == 3 and Counter.calls == 0
    assert Counter().on_train_batch_end is not None  # the class is untouched


def test_logger_connector_says_which_steps_are_logged(tmp_path):
    assert isinstance(inspect.getattr_static(_LoggerConnector, "should_update_logs"), property)
    trainer = quiet_trainer(log_every_n_steps=2, default_root_dir=tmp_path)
    assert isinstance(trainer._logger_connector, _LoggerConnector)
    assert logging_step(trainer) in (True, False) and logging_step(None) is True


def test_every_checkpoint_goes_through_trainer_save_checkpoint(tmp_path):
    params = list(inspect.signature(pl.Trainer.save_checkpoint).parameters)
    assert params == ["self", "filepath", "weights_only", "storage_options"], params
    source = inspect.getsource(pl.callbacks.ModelCheckpoint._save_checkpoint)
    assert "trainer.save_checkpoint(" in source
    from pytorch_lightning.trainer.connectors.signal_connector import _SignalConnector

    assert "self.trainer.save_checkpoint(" in inspect.getsource(_SignalConnector)

    entered = []

    class Around:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False

    trainer = quiet_trainer(max_steps=1, default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    wrap_save_checkpoint(trainer, Around)
    wrap_save_checkpoint(trainer, Around)  # once per Trainer
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    assert entered == [1] and torch.load(tmp_path / "a.ckpt", weights_only=False)["global_step"] == 1
    unwrap_save_checkpoint(trainer)
    assert trainer.save_checkpoint.__func__ is pl.Trainer.save_checkpoint
