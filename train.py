"""Train one configuration of the study: compose -> validate -> instantiate -> fit -> test.

    python train.py                                   # ViT, 2 layers, pre-norm, AdamW, CIFAR-10
    python train.py model.num_layers=6 model.norm=post
    python train.py -m optimizer=adam,adamw,sgd,momentum
    python train.py model=lstm                        # LSTM language model on WikiText-2

Each run writes into its Hydra output directory: the resolved config, TensorBoard events,
checkpoints and ``metrics.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_modules.callbacks import RunSummary
from lmvit.config import ConfigError, flatten, print_config, validate

log = logging.getLogger("train")


def train(cfg: DictConfig) -> float | None:
    """Run one job; returns the best value of the monitored metric (for sweepers)."""
    validate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    print_config(cfg, save_to=output_dir / "config.yaml")
    pl.seed_everything(cfg.seed, workers=True)

    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    summary = next(c for c in callbacks if isinstance(c, RunSummary))
    try:
        datamodule: pl.LightningDataModule = instantiate(cfg.data)
        model: pl.LightningModule = instantiate(cfg.model)
        loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
        trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        if summary.summary["status"] != "completed":  # fit stopped by an exception
            return None
        if cfg.test:
            has_best = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
            trainer.test(model, datamodule=datamodule, ckpt_path="best" if has_best else None)
        for logger in loggers:  # HParams tab: the whole config beside the final metrics
            logger.log_hyperparams(flatten(cfg), metrics=hparam_metrics(summary.summary))
            logger.finalize("success")
    except BaseException as exc:
        summary.fail(exc)
        raise
    best = summary.summary["best"].get(cfg.monitor.metric)
    log.info("Run directory: %s", output_dir)
    return best


def hparam_metrics(summary: dict) -> dict[str, float]:
    metrics = {**summary["final"], **summary["test"]}
    for key, value in summary["best"].items():
        if key != "epoch":
            metrics[f"best/{key}"] = value
    return {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, float)}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return train(cfg)
    except ConfigError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
