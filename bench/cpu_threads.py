"""Intra-op threads against loader workers on the CPU, and what validation costs per epoch.

    python bench/cpu_threads.py --repeats 3       # ViT Table 2 config 2, bf16 (the CPU default)

**Threads vs workers.** On a machine with few cores, the training process's intra-op threads
(``torch.set_num_threads``) and the CIFAR-10 loader's worker processes (``data.num_workers``:
decoding, augmentation) share the cores. Each variant runs ``--steps`` real training steps
(forward, backward, AdamW; bf16 autocast where the CPU has it, as ``trainer.precision`` chooses)
fed by its own loader with that many workers; variants alternate (ABBA) in one process, the
default (``lmvit.resolvers.default_workers`` workers, every core a thread) the baseline.

**Validation per epoch.** One epoch of ``budget=cpu`` (10,000 training images) against the
validation pass over the 5,000 validation images (forward only, eval mode, the same precision):
the seconds of each per image and the share of an epoch's time that validation takes.

**Now against before.** The same paired run also times the step as ``train.py`` ran it before the
CPU setting was chosen (fp32, AdamW's loop over tensors, ``cores - 1`` loader workers, at most
:data:`lmvit.resolvers.MAX_DEFAULT_WORKERS`) against the step as it runs now (the default layout
above, bf16 autocast where the CPU has it, the optimizer built by ``build_optimizer``: fused AdamW on
the CPU): the whole training step, its loading included, before and after.

Pinned memory needs no measurement: the loaders pin only when CUDA is present
(``datamodules.sampling``).
"""

from __future__ import annotations

import contextlib
import itertools
import os

import common
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lightning_modules.optim import build_optimizer, kernel_in_use
from lmvit.hardware import bf16_capable
from lmvit.resolvers import MAX_DEFAULT_WORKERS, default_workers


def setup(workers: int):
    from datamodules.cifar10 import CIFAR10DataModule

    dm = CIFAR10DataModule(data_dir=str(common.data_dir()), batch_size=128, num_workers=workers, download=False)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeats=3, warmup=1)
    p.add_argument("--steps", type=int, default=8, help="training steps per measurement")
    args = common.parse(p)
    cores = len(os.sched_getaffinity(0))
    bf16 = bf16_capable()
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    with initialize_config_dir(str(common.ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=vit", "optimizer=adamw", "paths.output_dir=/tmp"])

    base = (cores, default_workers())
    others = dict.fromkeys([(cores, 0), (cores, 1), (max(1, cores - 1), 1), (cores, cores)])  # in order, once
    layouts = [base] + [v for v in others if v != base]
    # name: (threads, workers, now's setting (bf16 where the CPU has it, train.py's optimizer) or before's)
    setups = {f"threads{t}_workers{w}": (t, w, True) for t, w in layouts}
    before = f"before_fp32_threads{cores}_workers{min(MAX_DEFAULT_WORKERS, cores - 1)}"
    setups[before] = (cores, min(MAX_DEFAULT_WORKERS, cores - 1), False)
    variants, optimizers = {}, {}
    for name, (threads, workers, now) in setups.items():
        torch.manual_seed(0)
        net = instantiate(cfg.model).net.train()
        factory = instantiate(cfg.optimizer)
        opt = optimizers[name] = build_optimizer(factory, net) if now else factory(net.parameters())
        loader = setup(workers).train_dataloader()
        batches = itertools.cycle(loader) if workers == 0 else iter(_forever(loader))
        cast = autocast if now else contextlib.nullcontext

        def measure(net=net, opt=opt, batches=batches, threads=threads, cast=cast):
            torch.set_num_threads(threads)
            try:

                def steps():
                    for _ in range(args.steps):
                        x, y = next(batches)
                        opt.zero_grad(set_to_none=True)
                        with cast():
                            loss = F.cross_entropy(net(x), y)
                        loss.backward()
                        opt.step()

                return common.timed(steps, 1) / args.steps
            finally:
                torch.set_num_threads(cores)

        variants[name] = measure
    samples = common.paired(variants, args.repeats, args.warmup)
    now = f"threads{base[0]}_workers{base[1]}"
    common.report(
        "cpu_threads_vs_workers",
        {k: v for k, v in samples.items() if k != before},
        baseline=now,
        unit="s/step",
        out=args.out,
        precision="bf16-mixed" if bf16 else "32-true",
        cores=cores,
    )
    common.report(
        "cpu_train_step_now_vs_before",
        {before: samples[before], now: samples[now]},
        baseline=before,
        unit="s/step",
        target=(now, "<=", 0.5),
        out=args.out,
        precision={before: "32-true", now: "bf16-mixed" if bf16 else "32-true"},
        optimizer_kernel={before: "default", now: kernel_in_use(optimizers[now])},
        cores=cores,
    )

    # validation's share of a budget=cpu epoch (10,000 training images, 5,000 validation images)
    torch.manual_seed(0)
    net = instantiate(cfg.model).net
    opt = instantiate(cfg.optimizer)(net.parameters())
    dm = setup(base[1])
    train_iter, val_batches = iter(_forever(dm.train_dataloader())), list(dm.val_dataloader())[:8]

    def train_image():
        net.train()

        def steps():
            for _ in range(args.steps):
                x, y = next(train_iter)
                opt.zero_grad(set_to_none=True)
                with autocast():
                    F.cross_entropy(net(x), y).backward()
                opt.step()

        return common.timed(steps, 1) / (args.steps * 128)

    def val_image():
        net.eval()
        with torch.no_grad(), autocast():
            seconds = common.timed(lambda: [net(x) for x, _ in val_batches], 1)
        return seconds / sum(len(y) for _, y in val_batches)

    per_image = common.paired({"train_image": train_image, "val_image": val_image}, args.repeats, args.warmup)
    med = {k: sorted(v)[len(v) // 2] for k, v in per_image.items()}
    train_s, val_s = med["train_image"] * 10_000, med["val_image"] * 5_000
    common.report(
        "cpu_validation_share",
        per_image,
        baseline="train_image",
        unit="s/image",
        out=args.out,
        budget_cpu_epoch={"train_s": round(train_s, 1), "val_s": round(val_s, 1)},
        validation_share=round(val_s / (train_s + val_s), 3),
    )


def _forever(loader):
    while True:
        yield from loader


if __name__ == "__main__":
    main()
