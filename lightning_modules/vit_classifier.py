"""LightningModule training the study's ViT on image classification."""

from __future__ import annotations

import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.base import OptimizerFactory, SchedulerFactory, StudyModule
from lightning_modules.nets.vit import VisionTransformer


class ViTClassifier(StudyModule):
    """Cross-entropy + accuracy around a plain :class:`VisionTransformer`.

    Every keyword not listed here is passed to the net (``embed_dim``, ``num_layers``, ``norm``, ...),
    so ``model.<name>`` in the config is the net's own argument.
    """

    def __init__(
        self,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        compile: bool | str = False,
        num_classes: int = 10,
        **net_kwargs,
    ) -> None:
        super().__init__(optimizer, scheduler, compile)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = VisionTransformer(num_classes=num_classes, **net_kwargs)
        # nan_strategy="disable": no NaN check per update (its `if nans.any()` is a device sync
        # every step); a NaN loss then shows up in the epoch mean instead of being dropped
        self.loss = {s: MeanMetric(nan_strategy="disable") for s in ("train", "val", "test")}
        self.acc = {s: MulticlassAccuracy(num_classes, average="micro") for s in self.loss}
        # register the metrics as submodules so they follow the module's device
        for stage in self.loss:
            self.add_module(f"{stage}_loss", self.loss[stage])
            self.add_module(f"{stage}_acc", self.acc[stage])

    def forward(self, images):
        return self.net(images)

    def _step(self, batch, stage: str):
        images, labels = batch
        logits = self.net(images)
        loss = F.cross_entropy(logits, labels)
        self.loss[stage].update(loss.detach(), weight=labels.numel())
        self.acc[stage].update(logits.detach(), labels)
        self.log(f"{stage}/loss", self.loss[stage], on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", self.acc[stage], on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        self.log("train/loss_step", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")
