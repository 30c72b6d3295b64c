"""LightningModule training the study's ViT on image classification."""

from __future__ import annotations

import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.base import OptimizerFactory, SchedulerFactory, StudyModule
from lightning_modules.metrics import WeightedMean
from lightning_modules.nets.vit import VisionTransformer


class ViTClassifier(StudyModule):
    """Cross-entropy + accuracy around a plain :class:`VisionTransformer`.

    Every keyword not listed here is passed to the net (``embed_dim``, ``num_layers``, ``norm``, ...),
    so ``model.<name>`` in the config is the net's own argument.
    """

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        compile: bool | str = False,
        compile_mode: str | None = None,
        num_classes: int = 10,
        **net_kwargs,
    ) -> None:
        super().__init__(optimizer, scheduler, compile, compile_mode)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = VisionTransformer(num_classes=num_classes, **net_kwargs)
        self.add_metric("loss", WeightedMean)  # no device sync per update (see metrics.py)
        # validate_args=False: no per-update input checks (labels come from the data module), same values
        self.add_metric("acc", lambda: MulticlassAccuracy(num_classes, average="micro", validate_args=False))

    def forward(self, images):
        return self.net(images)

    def step(self, batch, stage: str):
        images, labels = batch
        logits = self.net(images)
        loss = F.cross_entropy(logits, labels)
        self.metrics[stage]["loss"].update(loss.detach(), weight=labels.numel())
        self.metrics[stage]["acc"].update(logits.detach(), labels)
        return loss
