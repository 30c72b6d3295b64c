"""The EMA callback: the average follows its formula, is validated as its own metric, is kept in
checkpoints and resumes exactly. (Mid-epoch SIGKILL + resume with EMA on: test_reliability.)"""

from __future__ import annotations

import functools

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.callbacks.ema import EMA
from lightning_modules.vit_classifier import ViTClassifier
from tests.helpers import assert_close_rel, quiet_trainer

TINY = dict(embed_dim=16, hidden_dim=16, num_heads=2, num_layers=1)


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(10, (n,), generator=g))


def _module(seed=0):
    torch.manual_seed(seed)
    return ViTClassifier(optimizer=functools.partial(torch.optim.SGD, lr=0.5), **TINY)


def _trainer(callbacks, **kwargs):
    return quiet_trainer(callbacks=callbacks, **kwargs)


class Recorder(pl.Callback):
    """The net's weights at the start of fit and after every optimizer step."""

    def __init__(self):
        self.weights = []

    def _record(self, pl_module):
        self.weights.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})

    def on_fit_start(self, trainer, pl_module):
        self._record(pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args):
        self._record(pl_module)


def test_ema_follows_its_formula_and_is_validated_as_its_own_metric():
    decay = 0.8
    module, ema, recorder = _module(), EMA(decay), Recorder()
    train, val = DataLoader(_data(), batch_size=8), DataLoader(_data(16, seed=1), batch_size=8)
    _trainer([recorder, ema], max_epochs=1).fit(module, train, val)

    assert len(recorder.weights) == 4  # start + 3 steps
    expected = dict(recorder.weights[0])
    for weights in recorder.weights[1:]:  # ema_t = decay * ema_{t-1} + (1 - decay) * w_t
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    averaged = ema.average.module.state_dict()
    for key, value in expected.items():
        assert_close_rel(averaged[key], value, msg=key)
    assert not torch.equal(averaged["head.1.weight"], module.net.state_dict()["head.1.weight"])

    # val/acc_ema is the accuracy of the averaged weights, val/acc that of the net's own
    images, labels = val.dataset.tensors
    net = ema.average.module.eval()
    with torch.no_grad():
        ema_acc = (net(images).argmax(-1) == labels).float().mean()
        acc = (module.net.eval()(images).argmax(-1) == labels).float().mean()
    metrics = module.trainer.callback_metrics
    assert_close_rel(metrics["val/acc_ema"], ema_acc)
    assert_close_rel(metrics["val/acc"], acc)


def test_ema_off_adds_nothing():
    module, ema = _module(), EMA(None)
    _trainer([ema], max_epochs=1, limit_val_batches=1).fit(
        module, DataLoader(_data(8), batch_size=8), DataLoader(_data(8), batch_size=8)
    )
    assert ema.average is None and ema.state_dict() == {}
    assert "val/acc_ema" not in module.trainer.callback_metrics


def test_resumed_ema_ends_equal_to_an_uninterrupted_one(tmp_path):
    train, val = DataLoader(_data(), batch_size=8), DataLoader(_data(8, seed=1), batch_size=8)
    whole = EMA(0.7)
    module = _module()
    _trainer([whole], max_epochs=2).fit(module, train, val)

    first = EMA(0.7)
    half = _trainer([first], max_epochs=1)
    half.fit(_module(), train, val)
    half.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed_ema = EMA(0.7)
    resumed = _module(seed=123)  # other initial weights: everything must come from the checkpoint
    _trainer([resumed_ema], max_epochs=2).fit(resumed, train, val, ckpt_path=tmp_path / "epoch1.ckpt")

    for key, value in whole.average.state_dict().items():
        torch.testing.assert_close(resumed_ema.average.state_dict()[key], value, rtol=0, atol=0, msg=key)
    for key, value in module.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[key], value, rtol=0, atol=0, msg=key)

    # the checkpoint holds the average, readable as the net's own state_dict
    saved = EMA.net_state_dict(tmp_path / "epoch1.ckpt")
    for key, value in first.average.module.state_dict().items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0)
    fresh = _module()
    fresh.net.load_state_dict(saved)
