"""Speed options, checked for numerical sanity on CPU (real CIFAR-10 images throughout).

* ``data.device_augment``: whole-batch flip + RandomResizedCrop against torchvision's per-image
  transform (same pixels for the same boxes; same box distribution; same flip rate; same
  per-channel statistics through the data module) and exact eval batches;
* no device->host sync in a training step (the NaN check of torchmetrics' MeanMetric was one);
* ``model.attention=sdpa`` + ``trainer.precision=bf16-mixed`` + ``data.device_augment=true`` and
  ``model.compile`` end to end through ``train.py``, the compiled run's checkpoint loading into a
  plain module.
"""

from __future__ import annotations

import collections
import math
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from datamodules import cifar10
from datamodules.augment import augment_batch, resized_crop, sample_crop_boxes
from lightning_modules.callbacks import FiniteLossGuard
from lightning_modules.callbacks.progress_bar import ProgressBar
from lightning_modules.vit_classifier import ViTClassifier
from tests.helpers import assert_close_rel, find_runs, load_metrics, run_train

SCALE, RATIO, SIZE = cifar10.CROP_SCALE, cifar10.CROP_RATIO, cifar10.IMAGE_SIZE
TINY = dict(embed_dim=32, hidden_dim=64, num_heads=4, num_layers=1)
TINY_OVERRIDES = [f"model.{k}={v}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def images(data_dir):
    """The first 10,000 real training images (uint8) and labels."""
    return cifar10.load_batch(data_dir / cifar10.FOLDER / "data_batch_1")


# -- whole-batch augmentation vs torchvision --------------------------------------------------
def test_resized_crop_matches_torchvision_per_image(images):
    x = images[0][:300]
    g = torch.Generator().manual_seed(0)
    top, left, h, w = sample_crop_boxes(len(x), 32, 32, SCALE, RATIO, generator=g)
    ours = resized_crop(x, top, left, h, w, SIZE)
    boxes = zip(top.tolist(), left.tolist(), h.tolist(), w.tolist())
    per_image = [(x[i], *b) for i, b in enumerate(boxes)]
    ref_float = torch.stack(
        [TF.resized_crop(im.float(), t, l, hh, ww, [SIZE, SIZE], antialias=True) for im, t, l, hh, ww in per_image]
    )
    ref_uint8 = torch.stack(
        [TF.resized_crop(im, t, l, hh, ww, [SIZE, SIZE], antialias=True) for im, t, l, hh, ww in per_image]
    ).float()
    # the same function as torchvision's bilinear (antialiased) resize...
    assert_close_rel(ours, ref_float)
    # ...and within one uint8 level of the CPU path's uint8 kernel (fixed-point rounding)
    assert (ours.round() - ref_uint8).abs().max() <= 1
    assert abs((ours.round() - ref_uint8).mean()) < 0.05


def _tv(a: collections.Counter, b: collections.Counter) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


def test_crop_box_distribution_matches_torchvision():
    n = 20_000
    torch.manual_seed(0)
    top, left, h, w = sample_crop_boxes(n, 32, 32, SCALE, RATIO)
    ours = list(zip(top.tolist(), left.tolist(), h.tolist(), w.tolist()))
    rrc = v2.RandomResizedCrop(SIZE, scale=SCALE, ratio=RATIO)
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    params = getattr(rrc, "make_params", None) or rrc._get_params  # torchvision >= 0.21 | older
    ref = [tuple(p[k] for k in ("top", "left", "height", "width")) for p in (params([image]) for _ in range(n))]

    # box sizes (what the rejection sampling shapes), offsets, and the scale/aspect they imply
    size_ours, size_ref = collections.Counter(b[2:] for b in ours), collections.Counter(b[2:] for b in ref)
    # sampling noise at n=20k is about 0.01; one attempt clamped to the image instead of
    # torchvision's rejection sampling would give 0.09
    assert _tv(size_ours, size_ref) < 0.03
    assert _tv(collections.Counter(b[:2] for b in ours), collections.Counter(b[:2] for b in ref)) < 0.05
    for stat in (lambda b: b[2] * b[3] / 1024, lambda b: b[3] / b[2], lambda b: b[0] / max(1, 32 - b[2])):
        a, r = torch.tensor([stat(b) for b in ours]), torch.tensor([stat(b) for b in ref])
        assert abs(a.mean() - r.mean()) < 4 * math.sqrt((a.var() + r.var()) / n) + 1e-6
    # the boxes always fit, as torchvision's
    assert all(0 <= t and 0 <= l and t + hh <= 32 and l + ww <= 32 for t, l, hh, ww in ours)


def test_flip_rate_is_one_half(images):
    x = images[0][:4000]
    asymmetric = (x != x.flip(-1)).flatten(1).any(1)
    torch.manual_seed(1)
    out = augment_batch(x, SIZE, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the whole image: flip only
    flipped = (out * 255 == x.flip(-1).float()).flatten(1).all(1)
    kept = (out * 255 == x.float()).flatten(1).all(1)
    assert bool((flipped | kept).all())  # nothing but a flip happened
    rate = flipped[asymmetric].float().mean().item()
    assert abs(rate - 0.5) < 4 * math.sqrt(0.25 / int(asymmetric.sum()))


def _collect(dm: cifar10.CIFAR10DataModule, loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for batch in loader:
        x, y = dm.on_after_batch_transfer(batch, 0)
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def test_device_augment_datamodule_matches_cpu_path(data_dir):
    """Same data module settings, both paths: eval batches identical; train batches with the same
    label multiset and per-channel statistics."""
    kwargs = dict(data_dir=str(data_dir), batch_size=250, num_workers=0, train_subset=2000)
    cpu = cifar10.CIFAR10DataModule(**kwargs)
    dev = cifar10.CIFAR10DataModule(**kwargs, device_augment=True)
    for dm in (cpu, dev):
        dm.prepare_data()
        dm.setup("fit")

    x_cpu, y_cpu = _collect(cpu, cpu.val_dataloader())
    x_dev, y_dev = _collect(dev, dev.val_dataloader())
    assert_close_rel(x_dev, x_cpu)
    assert torch.equal(y_dev, y_cpu)

    x_cpu, y_cpu = _collect(cpu, cpu.train_dataloader())
    x_dev, y_dev = _collect(dev, dev.train_dataloader())
    # the same seeded order as the CPU path; augmentation seeded by it (reproducible)
    torch.testing.assert_close(_collect(dev, dev.train_dataloader()), (x_dev, y_dev), atol=0, rtol=0)
    assert torch.equal(y_dev, y_cpu)
    assert x_dev.shape == x_cpu.shape == (2000, 3, 32, 32) and x_dev.dtype == torch.float32
    assert torch.equal(y_dev.sort().values, dev.data_train.labels.sort().values)  # each image once
    for stat in (lambda t: t.mean(dim=(0, 2, 3)), lambda t: t.std(dim=(0, 2, 3))):
        torch.testing.assert_close(stat(x_dev), stat(x_cpu), atol=0.01, rtol=0)
    # the crop shows in the images: the border pixels are interpolated, not copied, in most images
    raw = dev.data_train.images[:10].float() / 255
    assert not torch.allclose(
        x_dev[:10], (raw - torch.tensor(cifar10.MEAN).view(3, 1, 1)) / torch.tensor(cifar10.STD).view(3, 1, 1)
    )


# -- no device sync in the training step -------------------------------------------------------
# ops that copy a device value to the host (or whose output size depends on device data)
SYNC_OPS = {
    "_local_scalar_dense",
    "is_nonzero",
    "item",
    "_unique2",
    "unique_dim",
    "nonzero",
    "masked_select",
    "bincount",
    "unique_consecutive",
}


class SyncCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        # PyTorch keeps the optimizer's step counters on the CPU (non-capturable optimizers), so
        # reading them is no device sync: skip 0-dim CPU float tensors read by torch.optim
        if name in SYNC_OPS and not _optimizer_step_counter(args):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def _optimizer_step_counter(args) -> bool:
    import traceback

    t = args[0] if args else None
    return (
        isinstance(t, torch.Tensor)
        and t.dim() == 0
        and t.is_floating_point()
        and any("/torch/optim/" in f.filename for f in traceback.extract_stack(limit=8))
    )


class _CountBetweenSteps(pl.Callback):
    """Counts sync ops from the start of step 1 to the start of step 3 (two whole steps,
    logging, progress bar and the next batch's fetch included)."""

    def __init__(self) -> None:
        self.counter = SyncCounter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 1:
            self.counter.__enter__()
        elif batch_idx == 3:
            self.counter.__exit__(None, None, None)


def _vit_case(images):
    x, y = images[0][:64].float().div(255), images[1][:64]
    module = ViTClassifier(optimizer=partial(torch.optim.AdamW, lr=1e-3), **TINY)
    return module, TensorDataset(x, y)


def _lstm_case(images):
    from lightning_modules.language_model import LanguageModel

    tokens = images[0][:64].flatten()[: 64 * 9].long().view(64, 9)  # real bytes as token ids
    mask = torch.ones(64, 8)
    mask[::5, 6:] = 0  # some padding, as the last chunk has
    module = LanguageModel(
        optimizer=partial(torch.optim.AdamW, lr=1e-3), vocab_size=256, embedding_size=16, hidden_size=16, num_layers=1
    )
    return module, TensorDataset(tokens[:, :-1], tokens[:, 1:], mask)


@pytest.mark.parametrize("case", [_vit_case, _lstm_case], ids=["vit", "lstm"])
def test_training_step_has_no_device_sync(images, case):
    module, dataset = case(images)
    spy = _CountBetweenSteps()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        # the divergence guard with N > 1 keeps its record on the device: no sync either
        callbacks=[spy, ProgressBar(), FiniteLossGuard(check_every_n_steps=100)],
        log_every_n_steps=1000,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(dataset, batch_size=16))
    assert trainer.global_step == 4
    assert spy.counter.ops == [], f"device->host syncs in a training step: {spy.counter.ops}"


def test_progress_bar_stays_live_and_epoch_metrics_match_an_independent_count(images):
    """The bar advances every batch and shows the epoch metrics; the metric objects, logged once an
    epoch, give the accuracy and the mean loss of every batch of the epoch."""
    module, dataset = _vit_case(images)
    bar = ProgressBar(when="always")  # live under pytest too (its output is not a terminal)
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    module.train_acc.reset()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar, Record()],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, DataLoader(dataset, batch_size=16))
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert task.completed == task.total == 4
    assert set(bar._metric_component._metrics) >= {"train/loss", "train/acc"}  # shown at the epoch end
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(sum(losses) / 4, rel=1e-5)
    assert 0.0 <= trainer.callback_metrics["train/acc"].item() <= 1.0


# -- the options end to end --------------------------------------------------------------------
@pytest.mark.slow
def test_speed_options_run_and_compiled_checkpoint_round_trip(tmp_path, data_dir):
    """All four options in one train.py run (one subprocess keeps the suite fast): it finishes
    with finite bf16 losses, and the compiled net's checkpoint loads into a plain (uncompiled)
    module that gives the compiled net's outputs. ``model.compile=aot_eager``: the graph capture
    and autograd tracing of the default inductor, without its minutes of C++ code generation."""
    run_train(
        "debug=fast",
        "model.attention=sdpa",
        "trainer.precision=bf16-mixed",
        "data.device_augment=true",
        "model.compile=aot_eager",
        *TINY_OVERRIDES,
        "trainer.accelerator=cpu",
        log_dir=tmp_path,
        data_dir=data_dir,
    )
    (run,) = find_runs(tmp_path)
    metrics = load_metrics(run)
    assert metrics["status"] == "completed", metrics["error"]
    assert metrics["epochs"] == 2
    for key in ("train/loss", "val/loss"):
        value = metrics["final"][key]
        # 10 classes: near ln 10 at the start, and finite in bf16
        assert math.isfinite(value) and 1.0 < value < 4.0, (key, value)
    assert math.isfinite(metrics["test"]["test/loss"])

    ckpt_path = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    assert not any("_orig_mod" in k for k in state), "compiled checkpoint keys differ from the plain net's"
    plain = ViTClassifier.load_from_checkpoint(ckpt_path, optimizer=None, compile=False)
    compiled = ViTClassifier.load_from_checkpoint(ckpt_path, optimizer=None)  # compile from hparams
    assert compiled.hparams.compile == "aot_eager" and compiled.hparams.attention == "sdpa"
    compiled.configure_model()
    assert compiled.net._compiled_call_impl is not None and plain.net._compiled_call_impl is None
    x = torch.randn(4, 3, 32, 32)
    plain.eval(), compiled.eval()
    with torch.no_grad():
        assert_close_rel(compiled(x), plain(x))


def test_bf16_autocast_loss_close_to_fp32(images):
    x = images[0][:64].float().div(255)
    y = images[1][:64]
    torch.manual_seed(0)
    module = ViTClassifier(optimizer=partial(torch.optim.AdamW, lr=1e-3), **TINY, attention="sdpa")
    fp32 = torch.nn.functional.cross_entropy(module(x), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = torch.nn.functional.cross_entropy(module(x), y)
    assert torch.isfinite(bf16)
    assert abs(bf16.item() - fp32.item()) < 0.02 * fp32.item()


def test_compile_rejects_unknown_backend():
    with pytest.raises(ValueError, match="model.compile='nope': must be true, false or a torch.compile backend"):
        ViTClassifier(optimizer=None, compile="nope", **TINY)


def test_inherited_batch_hooks_are_skipped_and_implemented_ones_kept():
    """Lightning calls every per-batch hook of every callback each step (a profiler context each);
    train.py sets the inherited no-op ones to None, which Lightning skips."""
    from lightning_modules.callbacks.hooks import BATCH_HOOKS, skip_inherited_batch_hooks

    calls = collections.Counter()

    class Counting(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            calls["end"] += 1

    counting, checkpoint = skip_inherited_batch_hooks([Counting(), pl.callbacks.ModelCheckpoint(save_top_k=0)])
    assert callable(counting.on_train_batch_end) and counting.on_train_batch_start is None
    assert all(getattr(counting, name) is None for name in BATCH_HOOKS if name != "on_train_batch_end")
    assert callable(checkpoint.on_train_batch_end) and checkpoint.on_before_backward is None  # its own: kept
    assert pl.Callback.on_train_batch_start is not None and callable(Counting().on_train_batch_start)  # class untouched

    net = torch.nn.Linear(4, 2)

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            return self.net(batch).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[counting],
    )
    trainer.fit(Tiny(), train_dataloaders=torch.utils.data.DataLoader(torch.randn(12, 4), batch_size=4))
    assert calls["end"] == 3  # the implemented hook still runs every step
