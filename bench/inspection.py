"""What the inspection callbacks cost at the end of a validation epoch, against the validation epoch itself.

At the study's ViT sizes (d=256, 8 heads, ``--layers``), on real CIFAR-10 batches of 128:

* ``val_batch``: one validation forward of a batch (no grad), the unit of a validation epoch
  (5,000 images = 40 batches);
* ``class_update``: what ``class_inspection`` adds per validation batch (confusion-matrix update,
  softmax and top-k of the mistakes, from logits the step computed anyway);
* ``attention_end``: ``attention_inspection`` at epoch end (one ``return_attention=True`` forward of
  6 images, statistics, two pictures drawn with torch and written to an event file);
* ``class_end``: ``class_inspection`` at epoch end (confusion matrix computed, two figures drawn and written).

Variants alternate (``common.paired``); the JSON line gives medians and
``fraction_of_val_epoch`` = (40 x class_update + attention_end + class_end) / (40 x val_batch).

    python bench/inspection.py --layers 2 --repeats 5 [--device cuda]
"""

from __future__ import annotations

import statistics
import tempfile
from types import SimpleNamespace

import common
import torch
from torch.utils.tensorboard import SummaryWriter
from torchmetrics.classification import MulticlassConfusionMatrix

from lightning_modules.callbacks.inspection import AttentionInspection, ClassInspection
from lightning_modules.drawing import draw_confusion, draw_misclassified, overlay_grid
from lightning_modules.nets.vit import VisionTransformer

VAL_BATCHES = 40  # 5,000 validation images in batches of 128


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeats=5, warmup=1)
    p.add_argument("--layers", type=int, default=2)
    args = common.parse(p)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = VisionTransformer(embed_dim=256, hidden_dim=512, num_heads=8, num_layers=args.layers).to(device).eval()
    images, labels = common.cifar10_batches(1, 128)[0]
    images, labels = images.to(device), labels.to(device)
    writer = SummaryWriter(tempfile.mkdtemp(prefix="bench-inspection-"))
    attention = AttentionInspection(num_images=6)
    classes = ClassInspection(num_misclassified=16)
    classes.confusion = MulticlassConfusionMatrix(10).to(device)
    with torch.no_grad():
        logits = net(images)

    def val_batch() -> float:
        return common.timed(lambda: torch.no_grad()(net)(images), 1, device)

    def class_update() -> float:
        classes._hook, classes._logits = object(), logits
        trainer = SimpleNamespace()
        return common.timed(
            lambda: (
                setattr(classes, "_logits", logits),
                classes.on_validation_batch_end(trainer, None, None, (images, labels), 0),
            ),
            1,
            device,
        )

    def attention_end() -> float:
        def work():
            result = attention.inspect(net, images[:6])
            layers = [c.mean(dim=1) for c in result["cls"]]
            for tag, picture in {
                "layers": overlay_grid(images[:6], layers),
                "rollout": overlay_grid(images[:6], [result["rollout"]]),
            }.items():
                writer.add_image(tag, picture, 0, dataformats="CHW")

        return common.timed(work, 1, device)

    def class_end() -> float:
        def work():
            matrix = classes.confusion.compute().long().cpu()
            names = [str(i) for i in range(10)]
            writer.add_image("matrix", draw_confusion(matrix, names), 0, dataformats="HWC")
            conf, imgs, true, pred = (t.cpu() for t in classes._worst)
            writer.add_image(
                "mistakes",
                draw_misclassified(imgs, [names[i] for i in true], [names[i] for i in pred], conf.tolist()),
                0,
                dataformats="HWC",
            )

        return common.timed(work, 1, device)

    samples = common.paired(
        {"val_batch": val_batch, "class_update": class_update, "attention_end": attention_end, "class_end": class_end},
        repeats=args.repeats,
        warmup=args.warmup,
    )
    med = {k: statistics.median(v) for k, v in samples.items()}
    epoch = VAL_BATCHES * med["val_batch"]
    added = VAL_BATCHES * med["class_update"] + med["attention_end"] + med["class_end"]
    common.report(
        f"inspection_{args.layers}l",
        samples,
        baseline="val_batch",
        unit="s",
        out=args.out,
        device=args.device,
        fraction_of_val_epoch=round(added / epoch, 4),
        val_epoch_s=round(epoch, 3),
        added_s=round(added, 3),
    )


if __name__ == "__main__":
    main()
