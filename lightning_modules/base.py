"""Training logic shared by the study's two LightningModules (no architecture here)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import Metric

from lightning_modules.callbacks.hooks import logging_step, skip_inherited_batch_hooks
from lightning_modules.callbacks.optimizer_mode import OptimizerModes
from lightning_modules.optim import build_optimizer, check_optimizer
from lmvit.settings import FLAG, Checked, invalid, one_of

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
STAGES = ("train", "val", "test")
# torch.compile's modes (model.compile_mode; null: torch's default)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def count_parameters(module: nn.Module) -> dict[str, int]:
    learnable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return {"learnable": learnable, "frozen": total - learnable}


def check_scheduler(scheduler: Any, prefix: str = "scheduler.") -> None:
    """A scheduler config (``_target_``) or partial, checked by its target's ``check_settings``."""
    if isinstance(scheduler, functools.partial):
        target, values = scheduler.func, scheduler.keywords
    elif isinstance(scheduler, Mapping) and scheduler.get("_target_"):
        from hydra.utils import get_object

        target, values = get_object(str(scheduler["_target_"])), scheduler
    else:
        return
    check = getattr(target, "check_settings", None)
    if callable(check):
        check(values, prefix)


class StudyModule(Checked, pl.LightningModule):
    """Holds ``self.net``, its per-stage metrics and the optimizer (and optional LR schedule).

    A subclass builds ``self.net``, declares its metrics with :meth:`add_metric` and implements
    :meth:`step` (loss of a batch, updating ``self.metrics[stage]``); this class logs every metric
    as ``<stage>/<name>`` per epoch and the training loss as ``train/loss_step`` at every logging step
    (``trainer.log_every_n_steps``). A subclass overriding ``on_{train,validation,test}_epoch_start``
    calls ``super()`` (the epoch's metrics are logged once, at its first batch).

    ``optimizer`` is a partial (Hydra ``_partial_: true``) taking the parameters; it is not saved in
    checkpoints, so ``Module.load_from_checkpoint(path)`` alone gives a model to evaluate (pass
    ``optimizer=`` to train it further);
    ``scheduler`` an optional partial taking the optimizer and ``total_steps``.
    Parameter groups (``no_weight_decay=True``: weight decay 0 for norms, biases and what the net
    lists in ``no_weight_decay()``), ``lr_scale`` and Muon's split are made in
    :func:`lightning_modules.optim.build_optimizer`.
    ``compile=True`` compiles the plain net with ``torch.compile`` (the LightningModule is not
    compiled); a string names the backend instead of the default ``inductor`` (e.g. ``aot_eager``:
    graph capture and autograd tracing without code generation, seconds instead of minutes on CPU).
    ``compile_mode`` is torch.compile's ``mode`` (None: its default; ``reduce-overhead``: CUDA graphs,
    which take the Python launch cost of each kernel off a small model's step on a GPU).
    """

    net: nn.Module
    SETTINGS = {"no_weight_decay": FLAG, "compile_mode": one_of(COMPILE_MODES)}
    PREFIX = "model."

    @classmethod
    def check_settings(cls, values: Mapping[str, Any], prefix: str | None = None) -> None:
        """The model's settings, its optimizer's (``optimizer.*``) and its schedule's (``scheduler.*``)."""
        super().check_settings(values, prefix)
        prefix = cls.PREFIX if prefix is None else prefix
        compile = values.get("compile")
        if isinstance(compile, str):
            import torch._dynamo

            backends = torch._dynamo.list_backends(exclude_tags=())
            if compile not in backends:
                raise invalid(
                    f"{prefix}compile", compile, f"true, false or a torch.compile backend: {', '.join(backends)}"
                )
        check_optimizer(values.get("optimizer"))
        check_scheduler(values.get("scheduler"))

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        compile: bool | str = False,
        no_weight_decay: bool = False,
        compile_mode: str | None = None,
    ) -> None:
        super().__init__()
        settings = dict(optimizer=optimizer, scheduler=scheduler, compile=compile, no_weight_decay=no_weight_decay)
        StudyModule.check_settings({**settings, "compile_mode": compile_mode})
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.compile_net = compile
        self.no_weight_decay = no_weight_decay
        self.compile_mode = compile_mode
        self.metrics: dict[str, dict[str, Metric]] = {stage: {} for stage in STAGES}
        self.metric_factories: dict[str, Callable[[], Metric]] = {}
        self._logged_this_epoch: set[str] = set()  # stages whose metric objects are logged this epoch

    def add_metric(self, name: str, factory: Callable[[], Metric]) -> None:
        """One ``factory()`` metric per stage, a submodule ``<stage>_<name>`` (so it follows the
        module's device), logged as ``<stage>/<name>`` at the end of each epoch."""
        self.metric_factories[name] = factory
        for stage in STAGES:
            metric = factory()
            self.add_module(f"{stage}_{name}", metric)
            self.metrics[stage][name] = metric

    def add_shadow_metrics(self, suffix: str, stages: tuple[str, ...] = ("val",)) -> None:
        """A copy ``<name><suffix>`` of each metric of ``stages``, logged as ``<stage>/<name><suffix>``,
        for a second copy of the net evaluated by ``step(batch, stage, net=copy, suffix=suffix)``
        (e.g. the EMA callback's ``val/acc_ema``). Idempotent."""
        for stage in stages:
            for name, factory in self.metric_factories.items():
                if name + suffix not in self.metrics[stage]:
                    metric = factory()
                    self.add_module(f"{stage}_{name}{suffix}", metric)
                    self.metrics[stage][name + suffix] = metric

    def step(self, batch, stage: str, net: nn.Module | None = None, suffix: str = "") -> torch.Tensor:
        """The batch's loss by ``net`` (default ``self.net``); updates ``self.metrics[stage]``'s
        metrics ``<name><suffix>``."""
        raise NotImplementedError

    def _logged_step(self, batch, stage: str) -> torch.Tensor:
        loss = self.step(batch, stage)
        # The metric objects are logged once per stage and epoch, at its first batch: Lightning keeps
        # the reference and computes the epoch value from all the epoch's updates (``step`` updates
        # them every batch), then resets them, exactly as when they are logged every step. Logging
        # a Metric object costs ~1 ms a call (Lightning moves its states to the device each time).
        if stage not in self._logged_this_epoch:
            for name, metric in self.metrics[stage].items():
                self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=True)
            self._logged_this_epoch.add(stage)
        return loss

    def on_train_epoch_start(self) -> None:
        self._logged_this_epoch.discard("train")

    def on_train_start(self) -> None:
        # A run resumed after the last training batch of an epoch (stopped during its validation)
        # re-enters that epoch with no training step left to log the metric objects: they are logged
        # here, their states (the epoch's batches) restored by callbacks.resume.ResumeState.
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        if 0 < progress.completed >= self.trainer.num_training_batches:
            for name, metric in self.metrics["train"].items():
                self.log(f"train/{name}", metric, on_step=False, on_epoch=True, prog_bar=True)
            self._logged_this_epoch.add("train")

    def on_validation_epoch_start(self) -> None:
        self._logged_this_epoch.discard("val")

    def on_test_epoch_start(self) -> None:
        self._logged_this_epoch.discard("test")

    def training_step(self, batch, batch_idx):
        loss = self._logged_step(batch, "train")
        if self._logging_step():
            self.log("train/loss_step", loss, on_step=True, on_epoch=False)
        return loss

    def _logging_step(self) -> bool:
        """Whether this step's per-step ``self.log`` values reach a logger (callbacks/hooks.py). Each
        ``self.log`` call costs ~0.3 ms on a CPU, so per-step values are logged only then (the
        loggers receive exactly what they did before)."""
        return logging_step(self._trainer)

    def validation_step(self, batch, batch_idx):
        self._logged_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._logged_step(batch, "test")

    def configure_model(self) -> None:
        # nn.Module.compile compiles the net's forward in place: parameters and state_dict keys
        # stay those of the plain net, so checkpoints load with or without compile.
        if self.compile_net and getattr(self.net, "_compiled_call_impl", None) is None:
            backend = self.compile_net if isinstance(self.compile_net, str) else "inductor"
            self.net.compile(backend=backend, mode=self.compile_mode)

    def parameter_counts(self) -> dict[str, int]:
        return count_parameters(self.net)

    def configure_callbacks(self):
        # Schedule-Free's train/eval modes around evaluation and checkpoints (no-op for the others);
        # once per Trainer (test after fit would otherwise replace it, with a message)
        if any(isinstance(c, OptimizerModes) for c in self.trainer.callbacks):
            return []
        return skip_inherited_batch_hooks([OptimizerModes()])

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError(
                f"{type(self).__name__} has no optimizer: it was loaded for evaluation. Pass one to "
                "train it, e.g. load_from_checkpoint(path, optimizer=functools.partial(torch.optim.AdamW, lr=3e-4))."
            )
        clips = bool(self._trainer is not None and self.trainer.gradient_clip_val)
        optimizer = build_optimizer(self.optimizer_factory, self.net, self.no_weight_decay, clips)
        grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in self.named_parameters() if p.requires_grad and id(p) not in grouped]
        if missing:  # a parameter outside self.net would silently never train
            raise RuntimeError(f"parameters outside {type(self).__name__}.net are not optimized: {missing}")
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
