"""Trainer overhead: training steps through our Trainer + LightningModule vs a plain PyTorch loop.

Both sides train the same net (same initial weights) with the same optimizer on the same real
batches, held in memory so the data pipeline is out of the picture:

* ``lightning``: the model and Trainer composed from ``conf/`` as ``train.py`` does (callbacks:
  epoch timer, run summary, Rich progress bar; TensorBoard logger; checkpointing off as it runs
  once per epoch), ``trainer.fit`` over the batches; the time from the first batch's start to the
  end of the epoch's last step (callback hooks, metric updates, logging and the progress bar
  included; the once-per-fit setup is not per step and is excluded);
* ``plain``: a fresh optimizer (``fit`` makes one too), then ``for x, y in batches: zero_grad;
  loss(net, x, y).backward(); step`` over the same DataLoader.

Target: lightning / plain <= 1.05 per step. One case per model of the study (``--case``); a case
says how to make its batches, its plain loss and its config overrides, so adding a model is one
entry in CASES.

    python bench/trainer_overhead.py --case vit [--steps 4 --repeats 5]
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import common
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader


@dataclass
class Case:
    overrides: list[str]                      # Hydra overrides selecting the model of the study
    batches: Callable[[int], list]            # n -> n real batches (tensors, already collated)
    loss: Callable[[torch.nn.Module, object], torch.Tensor]  # plain loss of the net on a batch
    extra: dict = field(default_factory=dict)


def _vit_loss(net, batch):
    x, y = batch
    return F.cross_entropy(net(x), y)


CASES: dict[str, Case] = {
    # the study's 2-layer pre-norm ViT, batch 128, AdamW (Table 2, config 2)
    "vit": Case(["model=vit", "optimizer=adamw"], lambda n: common.cifar10_batches(n, 128), _vit_loss),
    # "lstm": the 1-layer LSTM, batch 16, 256 tokens (Table 1): add it here once
    # lightning_modules/language_model.py lands, with its WikiText-2 batches and masked-NLL loss.
}


class StepWindow(pl.Callback):
    """Wall-clock from the first batch's start to the end of the training epoch (all steps)."""

    def __init__(self, device: str) -> None:
        self.device, self.start, self.seconds, self.steps = device, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            common.synchronize(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps = batch_idx + 1

    def on_train_epoch_end(self, trainer, pl_module):
        common.synchronize(self.device)
        self.seconds = time.perf_counter() - self.start


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--case", choices=sorted(CASES), default="vit")
    p.add_argument("--steps", type=int, default=4, help="training steps per measurement")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.attention=sdpa")
    args = p.parse_args()
    case = CASES[args.case]
    batches = case.batches(args.steps)
    tmp = tempfile.mkdtemp(prefix="bench-trainer-")
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    with initialize_config_dir(str(common.ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[
            *case.overrides, *args.overrides, f"paths.output_dir={tmp}",
            "callbacks.run_summary.overrides=[]", "~callbacks.model_checkpoint",
            f"trainer.accelerator={accelerator}",
        ])
    pl.seed_everything(cfg.seed, workers=True)
    module: pl.LightningModule = instantiate(cfg.model)
    net = instantiate(cfg.model).net  # a second copy of the net, same initial weights
    net.load_state_dict(module.net.state_dict())
    net.to(args.device).train()
    loader = DataLoader(batches, batch_size=None)  # the same batches for both sides

    def lightning() -> float:
        window = StepWindow(args.device)
        callbacks = [window] + [instantiate(c) for c in cfg.callbacks.values() if c is not None]
        loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, max_epochs=1,
                              limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
                              enable_model_summary=False)
        trainer.fit(module, train_dataloaders=loader)
        assert window.steps == len(batches)
        return window.seconds / window.steps

    def plain() -> float:
        # a fresh optimizer per measurement, as trainer.fit builds one (state init in both)
        plain_opt = instantiate(cfg.optimizer)(net.parameters())
        common.synchronize(args.device)
        start = time.perf_counter()
        for batch in loader:
            batch = [t.to(args.device, non_blocking=True) for t in batch]
            plain_opt.zero_grad(set_to_none=True)
            case.loss(net, batch).backward()
            plain_opt.step()
        common.synchronize(args.device)
        return (time.perf_counter() - start) / len(batches)

    samples = common.paired({"plain": plain, "lightning": lightning}, args.repeats, args.warmup)
    common.report(f"trainer_overhead_{args.case}", samples, baseline="plain", unit="s/step",
                  target=("lightning", "<=", 1.05), out=args.out, device=args.device,
                  steps=args.steps, overrides=case.overrides + args.overrides)


if __name__ == "__main__":
    main()
