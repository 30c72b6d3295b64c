"""Train one configuration of the study: compose -> validate -> instantiate -> fit -> test.

    python train.py                                   # ViT, 2 layers, pre-norm, AdamW, CIFAR-10
    python train.py model.num_layers=6 model.norm=post
    python train.py -m optimizer=adam,adamw,sgd,momentum
    python train.py resume=logs/vit/runs/<date_time>  # continue a run that stopped

Each run writes into its Hydra output directory: the resolved config, TensorBoard events,
checkpoints and ``metrics.json`` (also when it fails).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

import lmvit.resolvers  # noqa: F401  (registers the ${lmvit.*} resolvers of conf/hydra)
from lightning_modules.callbacks import RunSummary
from lightning_modules.callbacks.hooks import skip_inherited_batch_hooks
from lmvit.cli import ErrorPolicy, allow_null_groups, refuse_unknown_choices
from lmvit.config import print_config, reference_config, run_hparams, validate
from lmvit.distributed import check_ddp_launch
from lmvit.resume import resume_config, run_identity

log = logging.getLogger("train")


def train(cfg: DictConfig, summary: RunSummary, choices: dict | None = None) -> float | None:
    """Fit (and test) one configuration; returns the best value of the monitored metric."""
    output_dir = Path(cfg.paths.output_dir)
    print_config(cfg, save_to=None if cfg.resume else output_dir / "config.yaml")
    pl.seed_everything(cfg.seed, workers=True)

    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    model: pl.LightningModule = instantiate(cfg.model)
    callbacks = skip_inherited_batch_hooks(
        [instantiate(c) for c in cfg.callbacks.values() if c is not None] + [summary]
    )
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]  # ~logger: none
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    check_ddp_launch(trainer)
    for logger in loggers:  # HParams tab: the run shows with its hyperparameters from the start
        logger.log_hyperparams(run_hparams(cfg, choices))
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if summary.summary["status"] != "completed":  # fit stopped early (e.g. Ctrl-C)
        return None
    if cfg.test:
        has_best = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
        trainer.test(model, datamodule=datamodule, ckpt_path="best" if has_best else None)
    for logger in loggers:  # HParams tab: the final metrics beside the hyperparameters
        logger.log_metrics(hparam_metrics(summary.summary))
        logger.finalize("success")
    log.info("Run directory: %s", output_dir)
    return summary.summary["best"].get(cfg.monitor.metric)


def hparam_metrics(summary: dict) -> dict[str, float]:
    metrics = {**summary["final"], **summary["test"]}
    for key, value in summary["best"].items():
        if key != "epoch":
            metrics[f"best/{key}"] = value
    return {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, float)}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    with ErrorPolicy(multirun=hydra_cfg.mode == RunMode.MULTIRUN) as policy:
        if cfg.resume:
            cfg = resume_config(cfg, list(hydra_cfg.overrides.task))
        summary = run_summary(cfg)
        policy.on_error = summary.fail  # a job that fails, even on a bad setting, says so in metrics.json
        reference = (
            None if cfg.resume else reference_config(list(hydra_cfg.overrides.task), dict(hydra_cfg.runtime.choices))
        )
        validate(cfg, reference)
        return train(cfg, summary, run_identity(cfg)[1])
    return None  # a multirun job that failed (recorded; the sweep goes on)


def run_summary(cfg: DictConfig) -> RunSummary:
    overrides, choices = run_identity(cfg)
    return RunSummary(
        path=str(Path(cfg.paths.output_dir) / "metrics.json"),
        task=str(cfg.get("task")),
        monitor=cfg.monitor.metric,
        mode=cfg.monitor.mode,
        seed=cfg.get("seed"),
        overrides=overrides,
        # which preset and which row of the study it reproduces (the report matches on it)
        experiment={
            "name": choices.get("experiment"),
            "label": cfg.get("label"),
            "study_config": cfg.get("study_config"),
            "budget": cfg.get("budget"),  # conf/budget/: full | cpu
        },
    )


if __name__ == "__main__":
    allow_null_groups()  # logger=null -> ~logger
    refuse_unknown_choices()  # budget=bogus -> one line naming the options
    main()
