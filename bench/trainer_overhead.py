"""Trainer overhead: training steps through our Trainer + LightningModule vs a plain PyTorch loop.

Both sides train the same net (same initial weights) with the same optimizer on the same real
batches, held in memory so the data pipeline is out of the picture, and they alternate step by
step in one process, so a shared machine's drift lands on both alike:

* ``lightning``: model, Trainer, callbacks (resume state, finite-loss guard, epoch timer, Rich
  progress bar) and TensorBoard logger composed from ``conf/`` as ``train.py`` does (checkpoints
  off: they are not per-step work); one ``trainer.fit`` over the batches. A step's time runs from one batch's start to
  the next one's (hooks, metric updates, logging, progress bar and the fetch included);
* ``plain``: run by a callback beside each Lightning step (after it on even steps, before it on
  odd ones), on its own copy of the net and its own optimizer: ``zero_grad;
  loss(net, batch).backward(); step`` on the same batch; its time is taken out of the Lightning
  step's window.

The first ``--warmup`` pairs are dropped. Target: lightning / plain <= 1.05 per step. One case
per model of the study (``--case``): a case says how to make its batches and its plain loss, so
adding a model is one entry in CASES.

    python bench/trainer_overhead.py --case vit [--repeats 8] [--device cuda]
    python bench/trainer_overhead.py --case lstm
    python bench/trainer_overhead.py --case vit --tiny --repeats 40   # the overhead alone, in ms

On a busy CPU the full-size steps vary by tens of percent from one to the next, so the ratio
needs many pairs; ``--tiny`` measures the per-step overhead itself (``overhead_ms_per_step``:
median of lightning - plain), which divided by the full model's step time gives the overhead
ratio without that noise.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import common
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader


@dataclass
class Case:
    overrides: list[str]  # Hydra overrides selecting the model of the study
    batches: Callable  # (cfg, n) -> (n real batches, extra model kwargs)
    loss: Callable[[torch.nn.Module, object], torch.Tensor]  # plain loss of the net on a batch
    tiny: list[str]  # overrides shrinking the net: the steps cost ~nothing, the framework remains


def _vit_batches(cfg, n):
    return common.cifar10_batches(n, cfg.data.batch_size), {}


def _vit_loss(net, batch):
    x, y = batch
    return F.cross_entropy(net(x), y)


def _lstm_batches(cfg, n):
    dm = instantiate(cfg.data, data_dir=str(common.data_dir()))
    dm.prepare_data()
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == n:
            break
    return batches, {"vocab_size": dm.vocab_size}


def _lstm_loss(net, batch):
    from lightning_modules.language_model import masked_nll

    source, target, mask = batch
    total, count = masked_nll(net(source), target, mask)
    return total / count.clamp_min(1)


CASES: dict[str, Case] = {
    # the study's 2-layer pre-norm ViT, batch 128, AdamW (Table 2, config 2)
    "vit": Case(["model=vit", "optimizer=adamw"], _vit_batches, _vit_loss,
                tiny=["model.embed_dim=8", "model.hidden_dim=8", "model.num_heads=1", "model.num_layers=1"]),
    # the study's 1-layer LSTM, batch 16, 256 tokens, AdamW (Table 1); WikiText-2 as in
    # ../shared/data (train on wiki.valid.tokens: the speed, not the numbers, matters here)
    "lstm": Case(["model=lstm", "optimizer=adamw", "data=wikitext2_offline"], _lstm_batches, _lstm_loss,
                 tiny=["model.embedding_size=8", "model.hidden_size=8", "data.seq_len=8"]),
}


class Interleave(pl.Callback):
    """One plain step on the same batch beside each Lightning step: after it on even steps,
    before it on odd ones (so neither side always meets the batch, or the allocator, first).
    A Lightning step's time runs from one batch start to the next, minus the plain step in it."""

    def __init__(self, plain_step: Callable[[object], float], device: str) -> None:
        self.plain_step, self.device = plain_step, device
        self.lightning: list[float] = []
        self.plain: list[float] = []
        self._start: float | None = None
        self._plain_wall = 0.0  # wall time of the plain step inside the current window

    def _run_plain(self, batch) -> None:
        start = time.perf_counter()
        self.plain.append(self.plain_step(batch))
        self._plain_wall += time.perf_counter() - start

    def _close_step(self) -> None:
        common.synchronize(self.device)
        now = time.perf_counter()
        if self._start is not None:
            self.lightning.append(now - self._start - self._plain_wall)
        self._start, self._plain_wall = now, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._close_step()
        if batch_idx % 2:
            self._run_plain(batch)
            self._start, self._plain_wall = time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx % 2 == 0:
            self._run_plain(batch)

    def on_train_epoch_end(self, trainer, pl_module):
        self._close_step()


class HookTimer:
    """Times every ``on_*`` hook of one callback (device work included), per training step, by
    wrapping the instance's methods: what that callback costs, measured in the run itself."""

    def __init__(self, callback: pl.Callback, device: str) -> None:
        self.device = device
        self.per_step: dict[int, float] = {}
        self._step = 0
        for name in dir(type(callback)):
            if name.startswith("on_"):
                setattr(callback, name, self._wrap(getattr(callback, name), name))

    def _wrap(self, hook, name):
        def timed(trainer, *args, **kwargs):
            if name == "on_train_batch_start":
                self._step = args[-1]  # batch_idx: the step's index in the one epoch
            common.synchronize(self.device)
            start = time.perf_counter()
            result = hook(trainer, *args, **kwargs)
            common.synchronize(self.device)
            self.per_step[self._step] = self.per_step.get(self._step, 0.0) + time.perf_counter() - start
            return result
        return timed

    def summary(self, warmup: int, steps: int) -> dict:
        measured = [self.per_step.get(i, 0.0) for i in range(warmup, steps)]
        return {"mean_ms_per_step": round(1e3 * statistics.fmean(measured), 3),
                "max_ms_one_step": round(1e3 * max(measured), 2),
                "median_ms_per_step": round(1e3 * statistics.median(measured), 4),
                "steps_over_1ms": {i: round(1e3 * t, 2) for i, t in enumerate(measured, warmup) if t > 1e-3}}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeats=8, warmup=2)
    p.add_argument("--case", choices=sorted(CASES), default="vit")
    p.add_argument("--tiny", action="store_true",
                   help="shrink the net (case.tiny): what remains per step is the framework's overhead")
    p.add_argument("--time-callback", action="append", default=[], metavar="NAME",
                   help="time this callback's hooks (its key in conf/callbacks, e.g. dynamics); repeatable")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.attention=sdpa")
    args = common.parse(p)
    case = CASES[args.case]
    tmp = tempfile.mkdtemp(prefix="bench-trainer-")
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    with initialize_config_dir(str(common.ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[
            *case.overrides, *(case.tiny if args.tiny else []), *args.overrides, f"paths.output_dir={tmp}",
            "~callbacks.model_checkpoint", "~callbacks.periodic_checkpoint",
            f"trainer.accelerator={accelerator}",
        ])
    steps = args.warmup + args.repeats
    batches, model_kwargs = case.batches(cfg, steps)
    pl.seed_everything(cfg.seed, workers=True)
    module: pl.LightningModule = instantiate(cfg.model, **model_kwargs)
    net = instantiate(cfg.model, **model_kwargs).net  # a second copy of the net
    net.load_state_dict(module.net.state_dict())  # same initial weights
    net.to(args.device).train()
    plain_opt = instantiate(cfg.optimizer)(net.parameters())

    def plain_step(batch) -> float:
        batch = [t.to(args.device) for t in batch]
        common.synchronize(args.device)
        start = time.perf_counter()
        plain_opt.zero_grad(set_to_none=True)
        case.loss(net, batch).backward()
        plain_opt.step()
        common.synchronize(args.device)
        return time.perf_counter() - start

    interleave = Interleave(plain_step, args.device)
    named = {name: instantiate(c) for name, c in cfg.callbacks.items() if c is not None}
    timers = {name: HookTimer(named[name], args.device) for name in args.time_callback if name in named}
    callbacks = [interleave] + list(named.values())
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, max_epochs=1,
                          limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
                          enable_model_summary=False)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    assert len(interleave.lightning) == len(interleave.plain) == steps
    samples = {"plain": interleave.plain[args.warmup:], "lightning": interleave.lightning[args.warmup:]}
    overhead = statistics.median(l - p for l, p in zip(samples["lightning"], samples["plain"]))
    # the mean counts the periodic work (a callback's every-N-steps step) that the median leaves out
    overhead_mean = statistics.fmean(l - p for l, p in zip(samples["lightning"], samples["plain"]))
    callback_ms = {name: t.summary(args.warmup, steps) for name, t in timers.items()}
    common.report(f"trainer_overhead_{args.case}" + ("_tiny" if args.tiny else ""), samples,
                  baseline="plain", unit="s/step", target=None if args.tiny else ("lightning", "<=", 1.05),
                  out=args.out, device=args.device, overhead_ms_per_step=round(overhead * 1e3, 2),
                  overhead_ms_per_step_mean=round(overhead_mean * 1e3, 2),
                  mean_ratio=round(sum(samples["lightning"]) / sum(samples["plain"]), 4),
                  **({"callback_ms": callback_ms} if callback_ms else {}),
                  overrides=case.overrides + (case.tiny if args.tiny else []) + args.overrides)


if __name__ == "__main__":
    main()
