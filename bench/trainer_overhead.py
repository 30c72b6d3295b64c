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

**The floor** (``--tiny``, on by default there; ``--no-floor`` skips it): the same tiny net in a
*bare* LightningModule (``training_step`` returns the loss, nothing logged) in a *bare* Trainer (no
logger, no progress bar, no checkpointing, no model summary; batches in memory) measured the same
way, in the same process. The two fits alternate ``--rounds`` times (ABBA: ours, floor, floor,
ours, ...), so the machine's drift lands on both; each round gives both overheads
(median of lightning - plain over its steps) and their ratio. Reported: ``overhead_ms_per_step``
(ours), ``floor_ms_per_step``, ``overhead_vs_floor`` (ratio of the pooled medians),
``overhead_vs_floor_paired`` (median of the per-round ratios) and its min/max over the rounds.
Target: ours <= 2 x the floor. Our side runs the default configuration as ``train.py`` does:
every callback of ``conf/callbacks/default.yaml`` (checkpoints included, into a temporary folder;
none is due within the measured steps) and the TensorBoard logger, and its batches come through
the training loader's resumable sampler (``--loader memory`` hands them over as the floor's).

    python bench/trainer_overhead.py --case vit --tiny --repeats 30 --warmup 5 --rounds 6 --threads 1
    python bench/trainer_overhead.py --case vit --tiny callbacks.progress_bar=null   # one piece off

Clock (``--clock``): on CPU the default is ``process``, this process's CPU time (all its threads:
the progress bar's redraw thread and TensorBoard's writer count), so the other processes of a
shared machine, which stretch wall-clock steps at random by milliseconds, do not count; on a GPU
``wall`` (device time is not CPU time).
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

from lightning_modules.callbacks.hooks import skip_inherited_batch_hooks

CLOCK = time.perf_counter  # --clock process: time.process_time (this process's CPU time, all threads)


@dataclass
class Case:
    overrides: list[str]  # Hydra overrides selecting the model of the study
    batches: Callable  # (cfg, n) -> (n real batches, extra model kwargs)
    loss: Callable[[torch.nn.Module, object], torch.Tensor]  # plain loss of the net on a batch
    tiny: list[str]  # overrides shrinking the net (and batch): the steps cost ~nothing, the framework remains


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
    "vit": Case(
        ["model=vit", "optimizer=adamw"],
        _vit_batches,
        _vit_loss,
        tiny=[
            "model.embed_dim=8",
            "model.hidden_dim=8",
            "model.num_heads=1",
            "model.num_layers=1",
            "data.batch_size=16",
        ],
    ),
    # the study's 1-layer LSTM, batch 16, 256 tokens, AdamW (Table 1); WikiText-2 as in
    # ../shared/data (train on wiki.valid.tokens: the speed, not the numbers, matters here)
    "lstm": Case(
        ["model=lstm", "optimizer=adamw", "data=wikitext2_offline"],
        _lstm_batches,
        _lstm_loss,
        tiny=["model.embedding_size=8", "model.hidden_size=8", "data.seq_len=8"],
    ),
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
        start = CLOCK()
        self.plain.append(self.plain_step(batch))
        self._plain_wall += CLOCK() - start

    def _close_step(self) -> None:
        common.synchronize(self.device)
        now = CLOCK()
        if self._start is not None:
            self.lightning.append(now - self._start - self._plain_wall)
        self._start, self._plain_wall = now, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._close_step()
        if batch_idx % 2:
            self._run_plain(batch)
            self._start, self._plain_wall = CLOCK(), 0.0

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
            start = CLOCK()
            result = hook(trainer, *args, **kwargs)
            common.synchronize(self.device)
            self.per_step[self._step] = self.per_step.get(self._step, 0.0) + CLOCK() - start
            return result

        return timed

    def summary(self, warmup: int, steps: int) -> dict:
        measured = [self.per_step.get(i, 0.0) for i in range(warmup, steps)]
        return {
            "mean_ms_per_step": round(1e3 * statistics.fmean(measured), 3),
            "max_ms_one_step": round(1e3 * max(measured), 2),
            "median_ms_per_step": round(1e3 * statistics.median(measured), 4),
            "steps_over_1ms": {i: round(1e3 * t, 2) for i, t in enumerate(measured, warmup) if t > 1e-3},
        }


class BareModule(pl.LightningModule):
    """The floor: a LightningModule that only returns the loss (no metric, no log)."""

    def __init__(self, net: torch.nn.Module, loss: Callable, optimizer: Callable) -> None:
        super().__init__()
        self.net, self.loss_fn, self.optimizer_factory = net, loss, optimizer

    def training_step(self, batch, batch_idx):
        return self.loss_fn(self.net, batch)

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())


def _first(items):
    return items[0]


def resumable_loader(batches: list, seed: int) -> DataLoader:
    """The batches through the training loader of datamodules/sampling.py (seeded, resumable order)."""
    from datamodules.sampling import EpochShuffleSampler, ResumableLoader

    sampler = EpochShuffleSampler(len(batches), seed, with_seeds=False)
    return ResumableLoader(batches, sampler=sampler, batch_size=1, collate_fn=_first, drop_last=True)


class Bench:
    """Builds and fits one side (ours or the floor) on the same batches, with a plain twin net."""

    def __init__(self, args, case: Case) -> None:
        self.args, self.case = args, case
        self.tmp = tempfile.mkdtemp(prefix="bench-trainer-")
        accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
        with initialize_config_dir(str(common.ROOT / "conf"), version_base="1.3"):
            self.cfg = compose(
                "train",
                overrides=[
                    *case.overrides,
                    *(case.tiny if args.tiny else []),
                    *args.overrides,
                    f"paths.output_dir={self.tmp}",
                    f"trainer.accelerator={accelerator}",
                ],
            )
        self.steps = args.warmup + args.repeats
        self.batches, self.model_kwargs = case.batches(self.cfg, self.steps)

    def _plain_step(self, net, opt):
        device, loss = self.args.device, self.case.loss

        def plain_step(batch) -> float:
            batch = [t.to(device) for t in batch]
            common.synchronize(device)
            start = CLOCK()
            opt.zero_grad(set_to_none=True)
            loss(net, batch).backward()
            opt.step()
            common.synchronize(device)
            return CLOCK() - start

        return plain_step

    def fit(self, side: str) -> tuple[list[float], list[float]]:
        """One fit of ``side`` ("ours" | "floor") over the batches: (plain, lightning) s/step after warm-up."""
        cfg, args = self.cfg, self.args
        pl.seed_everything(cfg.seed, workers=True)
        module = instantiate(cfg.model, **self.model_kwargs)
        net = instantiate(cfg.model, **self.model_kwargs).net  # the plain twin
        net.load_state_dict(module.net.state_dict())  # same initial weights
        net.to(args.device).train()
        interleave = Interleave(self._plain_step(net, instantiate(cfg.optimizer)(net.parameters())), args.device)
        if side == "ours":
            named = {name: instantiate(c) for name, c in cfg.callbacks.items() if c is not None}
            self.timers = {name: HookTimer(named[name], args.device) for name in args.time_callback if name in named}
            callbacks = [interleave] + skip_inherited_batch_hooks(named.values())  # as train.py
            loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
            trainer = instantiate(
                cfg.trainer,
                callbacks=callbacks,
                logger=loggers,
                max_epochs=1,
                limit_val_batches=0,
                num_sanity_val_steps=0,
                enable_model_summary=False,
                enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
            )
            loader = (
                resumable_loader(self.batches, cfg.seed)
                if args.loader == "resumable"
                else DataLoader(self.batches, batch_size=None)
            )
        else:
            module = BareModule(module.net, self.case.loss, instantiate(cfg.optimizer))
            trainer = pl.Trainer(
                accelerator=cfg.trainer.accelerator,
                devices=1,
                max_epochs=1,
                callbacks=[interleave],
                logger=False,
                enable_progress_bar=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                limit_val_batches=0,
                num_sanity_val_steps=0,
                default_root_dir=self.tmp,
            )
            loader = DataLoader(self.batches, batch_size=None)
        trainer.fit(module, train_dataloaders=loader)
        assert len(interleave.lightning) == len(interleave.plain) == self.steps
        return interleave.plain[args.warmup :], interleave.lightning[args.warmup :]


def _overheads(plain: list[float], lightning: list[float]) -> list[float]:
    return [a - b for a, b in zip(lightning, plain)]


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeats=8, warmup=2)
    p.add_argument("--case", choices=sorted(CASES), default="vit")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="shrink the net (case.tiny): what remains per step is the framework's overhead",
    )
    p.add_argument(
        "--rounds", type=int, default=4, help="with --tiny: fits of ours and of the floor, alternated (ABBA)"
    )
    p.add_argument("--no-floor", dest="floor", action="store_false", help="with --tiny: skip the bare-Lightning floor")
    p.add_argument(
        "--loader",
        choices=["resumable", "memory"],
        default="resumable",
        help="our side's loader: the resumable sampler of datamodules/sampling.py, or the batches as is",
    )
    p.add_argument(
        "--clock",
        choices=["wall", "process"],
        default=None,
        help="wall (default on a GPU) or process: this process's CPU time, all its threads (default "
        "on CPU: what other processes of a shared machine do is not counted)",
    )
    p.add_argument(
        "--time-callback",
        action="append",
        default=[],
        metavar="NAME",
        help="time every hook of callbacks.NAME inside our run (repeatable), e.g. dynamics",
    )
    p.add_argument(
        "overrides", nargs="*", help="extra Hydra overrides, e.g. model.attention=sdpa callbacks.progress_bar=null"
    )
    args = common.parse(p)
    args.clock = args.clock or ("wall" if args.device.startswith("cuda") else "process")
    global CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    case = CASES[args.case]
    bench = Bench(args, case)
    name = f"trainer_overhead_{args.case}" + ("_tiny" if args.tiny else "")
    overrides = case.overrides + (case.tiny if args.tiny else []) + args.overrides
    if not (args.tiny and args.floor):
        plain, lightning = bench.fit("ours")
        overhead = statistics.median(_overheads(plain, lightning))
        # the mean counts the periodic work (a callback's every-N-steps step) that the median leaves out
        overhead_mean = statistics.fmean(_overheads(plain, lightning))
        callback_ms = {n: t.summary(args.warmup, bench.steps) for n, t in getattr(bench, "timers", {}).items()}
        common.report(
            name,
            {"plain": plain, "lightning": lightning},
            baseline="plain",
            unit="s/step",
            target=None if args.tiny else ("lightning", "<=", 1.05),
            out=args.out,
            device=args.device,
            overhead_ms_per_step=round(overhead * 1e3, 2),
            overhead_ms_per_step_mean=round(overhead_mean * 1e3, 2),
            **({"callback_ms": callback_ms} if callback_ms else {}),
            overrides=overrides,
            loader=args.loader,
            clock=args.clock,
        )
        return
    sides = ["ours", "floor"]
    per_round: dict[str, list[float]] = {s: [] for s in sides}  # median overhead of each round
    pooled: dict[str, list[float]] = {s: [] for s in sides}
    samples: dict[str, list[float]] = {"plain": [], "lightning": []}  # our side's steps
    for r in range(args.rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            plain, lightning = bench.fit(side)
            over = _overheads(plain, lightning)
            per_round[side].append(statistics.median(over))
            pooled[side].extend(over)
            if side == "ours":
                samples["plain"] += plain
                samples["lightning"] += lightning
    ours, floor = statistics.median(pooled["ours"]), statistics.median(pooled["floor"])
    ratios = [a / b for a, b in zip(per_round["ours"], per_round["floor"])]
    common.report(
        name,
        samples,
        baseline="plain",
        unit="s/step",
        out=args.out,
        device=args.device,
        overhead_ms_per_step=round(ours * 1e3, 3),
        floor_ms_per_step=round(floor * 1e3, 3),
        overhead_vs_floor=round(ours / floor, 2),
        overhead_vs_floor_paired=round(statistics.median(ratios), 2),
        overhead_vs_floor_range=[round(min(ratios), 2), round(max(ratios), 2)],
        rounds={s: [round(v * 1e3, 3) for v in per_round[s]] for s in sides},
        target_floor="overhead_vs_floor <= 2",
        pass_floor=bool(ours / floor <= 2),
        overrides=overrides,
        loader=args.loader,
        clock=args.clock,
    )


if __name__ == "__main__":
    main()
