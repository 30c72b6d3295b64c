"""Data loading vs training: the CIFAR-10 training loader must outrun the ViT's training steps.

* ``loader``: the training DataLoader of ``conf/data/cifar10.yaml`` as configured (study
  augmentation per image, batch 128, its default workers, persistent), pulling batches from a
  running iterator (worker start-up excluded; the batches the workers prefetched while the
  other variants ran are drawn first, untimed, so the figure is sustained throughput);
* ``loader_device_augment``: the ``data.device_augment=true`` path (index batches, then the
  whole-batch augmentation of ``on_after_batch_transfer`` on ``--device``);
* ``vit_train``: training steps of the 2-layer ViT (forward, backward, AdamW) on the same
  batches, plain PyTorch on ``--device``.

All three in seconds per image; ratio = vit_train / loader = loader images/s over training
images/s. Target: >= 5 (the loader is never the bottleneck). WikiText-2 for the LSTM: add a
case once its data module lands.

    python bench/data_throughput.py [--batches 8] [--device cuda]
"""

from __future__ import annotations

import common
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--batches", type=int, default=8, help="loader batches per measurement")
    p.add_argument("--steps", type=int, default=2, help="training steps per measurement")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. data.num_workers=8")
    args = common.parse(p)
    dev = torch.device(args.device)
    with initialize_config_dir(str(common.ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=vit", f"data.data_dir={common.data_dir()}", *args.overrides])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    dev_dm = instantiate(cfg.data, device_augment=True)
    dev_dm.setup("fit")
    batch_size = cfg.data.batch_size

    def puller(loader, transfer=None):
        state = {"it": iter(loader)}
        buffered = loader.num_workers * (loader.prefetch_factor or 0)

        def next_batch():
            try:
                return next(state["it"])
            except StopIteration:
                state["it"] = iter(loader)
                return next(state["it"])

        def measure() -> float:
            def one():
                batch = next_batch()
                if transfer is not None:
                    transfer(batch)

            for _ in range(buffered):  # what the workers prefetched meanwhile is not throughput
                next_batch()
            return common.timed(one, args.batches, dev) / batch_size

        return measure

    def to_device_and_augment(batch):
        batch = {**batch, "index": batch["index"].to(dev)}
        return dev_dm.on_after_batch_transfer(batch, 0)

    torch.manual_seed(0)
    net = instantiate(cfg.model).net.to(dev).train()
    opt = instantiate(cfg.optimizer)(net.parameters())
    batches = [(x.to(dev), y.to(dev)) for x, y in common.cifar10_batches(args.steps, batch_size)]

    def train() -> float:
        def run():
            for x, y in batches:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), y).backward()
                opt.step()

        return common.timed(run, 1, dev) / (len(batches) * batch_size)

    samples = common.paired(
        {
            "loader": puller(dm.train_dataloader()),
            "loader_device_augment": puller(dev_dm.train_dataloader(), to_device_and_augment),
            "vit_train": train,
        },
        args.repeats,
        args.warmup,
    )
    line = common.report(
        "cifar10_loader_vs_vit_train",
        samples,
        baseline="loader",
        unit="s/image",
        target=("vit_train", ">=", 5.0),
        out=args.out,
        device=args.device,
        num_workers=cfg.data.num_workers,
        batch_size=batch_size,
        images_per_s={k: round(1 / v) for k, v in ((k, sorted(v)[len(v) // 2]) for k, v in samples.items())},
    )
    return line


if __name__ == "__main__":
    main()
