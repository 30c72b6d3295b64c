"""Looking inside the ViT at the end of validation (every N epochs): what it attends to, which
classes it confuses. Two callbacks, each one switch in ``conf/callbacks/default.yaml``:

* :class:`AttentionInspection` -- on a fixed batch of a few validation images (the first ones of
  the first validation batch), one extra forward with ``return_attention=True`` (so runs with
  ``model.attention=sdpa`` keep their fused path for everything else):

  - TensorBoard IMAGES ``attention/layers``: per image, the [cls] token's attention over the patches
    in each layer (mean over heads), drawn over the image; ``attention/rollout``: the attention
    rollout (Abnar & Zuidema 2020: per layer ``0.5 * mean_heads(A) + 0.5 * I``, rows renormalised,
    multiplied through the layers) of [cls] over the patches; ``attention/layer<l>_heads`` per head
    with ``per_head=true``;
  - scalars ``attention_entropy/layer<l>`` and ``attention_distance/layer<l>`` (mean over heads) and
    ``.../layer<l>_head<h>``: the entropy (nats) of each query's attention, and the mean attention
    distance in pixels (ViT paper, fig. 7): for each patch query the expected distance between patch
    centres under its attention over the patches ([cls] left out, weights renormalised).

* :class:`ClassInspection` -- over the whole validation set, from the logits the validation step
  computes anyway (a forward hook on the net during the epochs it acts on):

  - IMAGES ``confusion/matrix``: torchmetrics' ``MulticlassConfusionMatrix`` (rows: true class);
    ``confusion/misclassified``: the most confidently misclassified images with true and predicted labels;
  - scalars ``val_class_acc/<class>``, and ``metrics.json``'s ``per_class`` (the last epoch's
    per-class accuracy, counts and the matrix itself) through :meth:`RunSummary.record`.

Both do nothing for models other than the ViT (the LSTM). The statistics are computed in
:mod:`lightning_modules.attention_stats`, the pictures drawn in :mod:`lightning_modules.drawing`
(without matplotlib the matplotlib ones are skipped with one warning). Class names come from the data
module (its ``classes``, e.g. CIFAR-10's), else from ``class_names``, else the class numbers.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torchmetrics.classification import MulticlassConfusionMatrix

from lightning_modules.attention_stats import (
    attention_entropy,
    attention_rollout,
    cls_attention,
    mean_attention_distance,
)
from lightning_modules.callbacks.hooks import TRAIN_STEP_HOOKS, skip_hook
from lightning_modules.callbacks.run_summary import RunSummary
from lightning_modules.drawing import draw_confusion, draw_misclassified, overlay_grid
from lightning_modules.nets.vit import VisionTransformer
from lmvit.settings import FLAG, NON_NEGATIVE_INT, POSITIVE_INT, Checked

log = logging.getLogger(__name__)


class ValidationEndCallback(Checked, pl.Callback):
    """A callback acting only around validation: its per-training-step hooks are skipped
    (:func:`~lightning_modules.callbacks.hooks.skip_hook`), so a training step costs no dispatch at
    all for it (no call, no profiler context; about 4 us per hook and callback on a busy CPU
    otherwise, six hooks a step)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        skip_hook(self, *TRAIN_STEP_HOOKS)


def _tensorboards(trainer: pl.Trainer):
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def _due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    if trainer.sanity_checking or every_n_epochs < 1:
        return False
    epoch = trainer.current_epoch + 1
    last = trainer.max_epochs is not None and epoch == trainer.max_epochs
    return epoch % every_n_epochs == 0 or last


def _vit(pl_module: pl.LightningModule) -> VisionTransformer | None:
    net = getattr(pl_module, "net", None)
    return net if isinstance(net, VisionTransformer) else None


_warned_matplotlib = False


def _can_draw() -> bool:
    global _warned_matplotlib
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if not _warned_matplotlib:
            log.warning(
                "matplotlib is not installed: inspection images are skipped (scalars and metrics.json "
                "still written). pip install matplotlib to get them."
            )
            _warned_matplotlib = True
        return False
    return True


class AttentionInspection(ValidationEndCallback):
    """Attention maps, rollout and statistics of a fixed batch of ``num_images`` validation images,
    every ``every_n_epochs`` validation epochs (and the last); ``per_head`` adds one image per layer
    with each head's map. Scalars (entropy, distance) are per layer and per head."""

    SETTINGS = {"every_n_epochs": POSITIVE_INT, "num_images": POSITIVE_INT, "per_head": FLAG}
    PREFIX = "callbacks.attention_inspection."

    def __init__(self, every_n_epochs: int = 1, num_images: int = 6, per_head: bool = False) -> None:
        self.check_settings({"every_n_epochs": every_n_epochs, "num_images": num_images, "per_head": per_head})
        self.every_n_epochs, self.num_images, self.per_head = every_n_epochs, num_images, per_head
        self.images: torch.Tensor | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.images is None and batch_idx == 0 and dataloader_idx == 0 and _vit(pl_module) is not None:
            self.images = batch[0][: self.num_images].detach().clone()

    @torch.no_grad()
    def inspect(self, net: VisionTransformer, images: torch.Tensor) -> dict:
        """The batch's attention weights and statistics (what the callback logs)."""
        was_training = net.training
        net.eval()
        try:
            _, weights = net.forward(images, return_attention=True)  # explicit path, whatever model.attention is
        finally:
            net.train(was_training)
        weights = [w.float() for w in weights]
        return {
            "weights": weights,
            "cls": [cls_attention(w) for w in weights],
            "rollout": attention_rollout(weights),
            "entropy": [attention_entropy(w) for w in weights],
            "distance": [mean_attention_distance(w, net.patch_size) for w in weights],
        }

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        net = _vit(pl_module)
        if net is None or self.images is None or not _due(trainer, self.every_n_epochs) or not trainer.is_global_zero:
            return
        writers = _tensorboards(trainer)
        if not writers:
            return
        result = self.inspect(net, self.images.to(pl_module.device))
        step = trainer.global_step
        for writer in writers:
            for layer, (ent, dist) in enumerate(zip(result["entropy"], result["distance"]), start=1):
                writer.add_scalar(f"attention_entropy/layer{layer}", ent.mean().item(), step)
                writer.add_scalar(f"attention_distance/layer{layer}", dist.mean().item(), step)
                for head, (e, d) in enumerate(zip(ent.tolist(), dist.tolist()), start=1):
                    writer.add_scalar(f"attention_entropy/layer{layer}_head{head}", e, step)
                    writer.add_scalar(f"attention_distance/layer{layer}_head{head}", d, step)
        # columns: the image, then layer 1 ... L (mean over heads) | the rollout | head 1 ... H
        images = self.images
        pictures = {
            "attention/layers": overlay_grid(images, [c.mean(dim=1) for c in result["cls"]]),
            "attention/rollout": overlay_grid(images, [result["rollout"]]),
        }
        if self.per_head:
            for layer, c in enumerate(result["cls"], start=1):
                pictures[f"attention/layer{layer}_heads"] = overlay_grid(images, list(c.unbind(dim=1)))
        for writer in writers:
            for tag, picture in pictures.items():
                writer.add_image(tag, picture, step, dataformats="CHW")
            writer.flush()


class ClassInspection(ValidationEndCallback):
    """Confusion matrix, per-class accuracy and the ``num_misclassified`` most confidently
    misclassified images of the validation set, every ``every_n_epochs`` validation epochs (and the last)."""

    SETTINGS = {"every_n_epochs": POSITIVE_INT, "num_misclassified": NON_NEGATIVE_INT}
    PREFIX = "callbacks.class_inspection."

    def __init__(
        self, every_n_epochs: int = 1, num_misclassified: int = 16, class_names: list[str] | None = None
    ) -> None:
        self.check_settings({"every_n_epochs": every_n_epochs, "num_misclassified": num_misclassified})
        self.every_n_epochs, self.num_misclassified = every_n_epochs, num_misclassified
        self.class_names = list(class_names) if class_names else None
        self.confusion: MulticlassConfusionMatrix | None = None
        self._hook = None
        self._logits: torch.Tensor | None = None
        self._worst: tuple[torch.Tensor, ...] | None = None  # (confidence, images, true, predicted)

    def names(self, trainer, num_classes: int) -> list[str]:
        if self.class_names and len(self.class_names) == num_classes:
            return self.class_names
        classes = getattr(trainer.datamodule, "classes", None)
        if classes is not None and len(classes) == num_classes:
            return [str(c) for c in classes]
        return [str(i) for i in range(num_classes)]

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        net = _vit(pl_module)
        if net is None or not _due(trainer, self.every_n_epochs):
            return
        num_classes = int(pl_module.hparams.get("num_classes", 10))
        if self.confusion is None or self.confusion.num_classes != num_classes:
            self.confusion = MulticlassConfusionMatrix(num_classes)
        self.confusion = self.confusion.to(pl_module.device)
        self.confusion.reset()
        self._worst = None
        self._hook = net.register_forward_hook(self._capture)

    def _capture(self, module, args, output) -> None:
        self._logits = output.detach() if isinstance(output, torch.Tensor) else None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._hook is None or self._logits is None:
            return
        logits, self._logits = self._logits, None
        images, labels = batch[0], batch[1]
        self.confusion.update(logits, labels)
        if self.num_misclassified:
            conf, pred = logits.float().softmax(-1).max(-1)
            conf = conf.masked_fill(pred == labels, -1.0)  # only mistakes compete
            candidates = (conf, images.detach(), labels, pred)
            if self._worst is not None:
                candidates = tuple(torch.cat([a, b]) for a, b in zip(self._worst, candidates))
            top = candidates[0].topk(min(self.num_misclassified, len(candidates[0]))).indices
            self._worst = tuple(t[top] for t in candidates)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._hook is None:
            return
        self._hook.remove()
        self._hook, self._logits = None, None
        matrix = self.confusion.compute().long().cpu()  # every process: synced under DDP
        if not trainer.is_global_zero:
            return
        names = self.names(trainer, matrix.shape[0])
        counts = matrix.sum(1)
        acc = matrix.diag().double() / counts.clamp_min(1).double()
        per_class = {
            "epoch": trainer.current_epoch,
            "val/acc": {n: (a if c else None) for n, a, c in zip(names, acc.tolist(), counts.tolist())},
            "val/count": dict(zip(names, counts.tolist())),
            "val/confusion": matrix.tolist(),  # rows: true class, columns: predicted
        }
        for callback in trainer.callbacks:
            if isinstance(callback, RunSummary):
                callback.record("per_class", per_class)
        writers = _tensorboards(trainer)
        step = trainer.global_step
        for writer in writers:
            for name, a, c in zip(names, acc.tolist(), counts.tolist()):
                if c:
                    writer.add_scalar(f"val_class_acc/{name}", a, step)
        if not writers or not _can_draw():
            return
        pictures = {"confusion/matrix": draw_confusion(matrix, names)}
        if self._worst is not None:
            conf, images, labels, pred = (t.cpu() for t in self._worst)
            wrong = conf >= 0
            if wrong.any():
                pictures["confusion/misclassified"] = draw_misclassified(
                    images[wrong],
                    [names[i] for i in labels[wrong]],
                    [names[i] for i in pred[wrong]],
                    conf[wrong].tolist(),
                )
        for writer in writers:
            for tag, picture in pictures.items():
                writer.add_image(tag, picture, step, dataformats="HWC")
            writer.flush()
