"""Training logic shared by the study's two LightningModules (no architecture here)."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def count_parameters(module: nn.Module) -> dict[str, int]:
    learnable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return {"learnable": learnable, "frozen": total - learnable}


class StudyModule(pl.LightningModule):
    """Holds ``self.net`` and builds the optimizer (and optional LR schedule) from config.

    ``optimizer`` is a partial (Hydra ``_partial_: true``) taking the parameters;
    ``scheduler`` an optional partial taking the optimizer and ``total_steps``.
    ``compile=True`` wraps the plain net in ``torch.compile`` (the LightningModule is not compiled).
    """

    net: nn.Module

    def __init__(
        self,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.compile_net = compile

    def configure_model(self) -> None:
        if self.compile_net and not hasattr(self.net, "_orig_mod"):
            self.net = torch.compile(self.net)

    def parameter_counts(self) -> dict[str, int]:
        return count_parameters(self.net)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(
            optimizer, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
