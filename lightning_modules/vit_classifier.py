"""LightningModule training the study's ViT on image classification."""

from __future__ import annotations

import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.base import OptimizerFactory, SchedulerFactory, StudyModule
from lightning_modules.metrics import WeightedMean
from lightning_modules.nets.vit import VisionTransformer
from lmvit.settings import FRACTION


class ViTClassifier(StudyModule):
    """Cross-entropy + accuracy around a plain :class:`VisionTransformer`.

    Every keyword not listed here is passed to the net (``embed_dim``, ``num_layers``, ``norm``, ...),
    so ``model.<name>`` in the config is the net's own argument. ``label_smoothing`` smooths the
    training loss's targets (``F.cross_entropy(label_smoothing=...)``); 0 in the study.
    """

    BATCH = "images"  # what a batch holds: the data module's BATCH must match (lmvit.config.validate)
    SETTINGS = {**StudyModule.SETTINGS, "label_smoothing": FRACTION}

    @classmethod
    def check_settings(cls, values, prefix=None) -> None:
        super().check_settings(values, prefix)
        VisionTransformer.check_settings(values, prefix)  # the net's arguments are model.<name> too

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        compile: bool | str = False,
        compile_mode: str | None = None,
        num_classes: int = 10,
        label_smoothing: float = 0.0,
        no_weight_decay: bool = False,
        **net_kwargs,
    ) -> None:
        super().__init__(optimizer, scheduler, compile, no_weight_decay=no_weight_decay, compile_mode=compile_mode)
        self.check_settings({"label_smoothing": label_smoothing})  # the net checks its own
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.label_smoothing = label_smoothing
        self.net = VisionTransformer(num_classes=num_classes, **net_kwargs)
        self.add_metric("loss", WeightedMean)  # no device sync per update (see metrics.py)
        # validate_args=False: no per-update input checks (labels come from the data module), same values
        self.add_metric("acc", lambda: MulticlassAccuracy(num_classes, average="micro", validate_args=False))

    def forward(self, images):
        return self.net(images)

    def step(self, batch, stage: str, net=None, suffix: str = ""):
        """Loss of ``batch`` by ``net`` (default: ``self.net``), updating the stage's metrics
        ``<name><suffix>`` (``suffix="_ema"``: the EMA callback's copy of the net).

        Targets are class ids, or (MixUp/CutMix) soft targets (B, classes) whose accuracy counts
        the dominant class. Training applies ``label_smoothing``; validation and test report the
        plain cross-entropy, comparable across recipes and with the study.
        """
        images, targets = batch
        logits = (self.net if net is None else net)(images)
        smoothing = self.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, targets, label_smoothing=smoothing)
        labels = targets.argmax(dim=-1) if targets.is_floating_point() else targets
        metrics = self.metrics[stage]
        metrics["loss" + suffix].update(loss.detach(), weight=labels.numel())
        metrics["acc" + suffix].update(logits.detach(), labels)
        return loss
