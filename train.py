"""Train one configuration of the study: compose -> validate -> instantiate -> fit -> test.

    python train.py                                   # ViT, 2 layers, pre-norm, AdamW, CIFAR-10
    python train.py model.num_layers=6 model.norm=post
    python train.py -m optimizer=adam,adamw,sgd,momentum
    python train.py resume=logs/vit/runs/<date_time>  # continue a run that stopped

Each run writes into its Hydra output directory: the resolved config, TensorBoard events,
checkpoints and ``metrics.json`` (also when it fails).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datamodules.cifar10 import DatasetError
from lightning_modules.callbacks import DivergenceError, RunSummary
from lmvit.config import ConfigError, flatten, print_config, validate
from lmvit.distributed import check_ddp_launch

log = logging.getLogger("train")

# Hydra's run directory; a resumed run keeps Hydra's files apart from the run's own.
OmegaConf.register_new_resolver(
    "lmvit.run_dir",
    lambda resume, base, stamp: f"{resume}/resumes/{stamp}" if resume else f"{base}/{stamp}",
    replace=True,
)



def job_dirname(overrides: str, num: int) -> str:
    """A sweep job's directory: its overrides, shortened with a hash when too long for a file name."""
    if not overrides:
        return f"job{num}"
    if len(overrides) <= 150:
        return overrides
    return f"{overrides[:120]}...{hashlib.sha1(overrides.encode()).hexdigest()[:10]}"


OmegaConf.register_new_resolver("lmvit.job_dirname", job_dirname, replace=True)

# errors whose message says all: printed as one line (HYDRA_FULL_ERROR=1 shows the traceback)
KNOWN_ERRORS = (ConfigError, DatasetError, DivergenceError)


def train(cfg: DictConfig, summary: RunSummary) -> float | None:
    """Fit (and test) one configuration; returns the best value of the monitored metric."""
    output_dir = Path(cfg.paths.output_dir)
    print_config(cfg, save_to=None if cfg.resume else output_dir / "config.yaml")
    pl.seed_everything(cfg.seed, workers=True)

    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    model: pl.LightningModule = instantiate(cfg.model)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None] + [summary]
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    check_ddp_launch(trainer)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if summary.summary["status"] != "completed":  # fit stopped early (e.g. Ctrl-C)
        return None
    if cfg.test:
        has_best = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
        trainer.test(model, datamodule=datamodule, ckpt_path="best" if has_best else None)
    for logger in loggers:  # HParams tab: the whole config beside the final metrics
        logger.log_hyperparams(flatten(cfg), metrics=hparam_metrics(summary.summary))
        logger.finalize("success")
    log.info("Run directory: %s", output_dir)
    return summary.summary["best"].get(cfg.monitor.metric)


def hparam_metrics(summary: dict) -> dict[str, float]:
    metrics = {**summary["final"], **summary["test"]}
    for key, value in summary["best"].items():
        if key != "epoch":
            metrics[f"best/{key}"] = value
    return {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, float)}


def resume_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The saved config of the run in ``cfg.resume``, set to continue from its last checkpoint.

    Other command-line overrides must name keys of the saved config (e.g. ``trainer.max_epochs=20``,
    or ``++key=value`` for a key the default config lacks)."""
    run_dir = Path(str(cfg.resume)).expanduser().resolve()
    saved_path, ckpt = run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not saved_path.is_file():
        raise ConfigError(
            f"Invalid setting resume={cfg.resume!r}: {saved_path} not found. Pass the directory of "
            "a run (it holds config.yaml, metrics.json and checkpoints/)."
        )
    if not ckpt.is_file():
        raise ConfigError(
            f"Invalid setting resume={cfg.resume!r}: no checkpoint {ckpt} (the run stopped before "
            "its first checkpoint). Start it again instead."
        )
    saved = OmegaConf.load(saved_path)
    extra = [o.lstrip("+") for o in overrides if not o.startswith("resume=")]
    for override in extra:
        key = override.split("=", 1)[0]
        if "=" not in override or OmegaConf.select(saved, key, default="<absent>") == "<absent>":
            raise ConfigError(
                f"Invalid override {override!r} with resume: only key=value overrides of the run's "
                "existing settings are allowed (e.g. trainer.max_epochs=20; prefix ++ for keys the "
                "default config lacks)."
            )
    saved.merge_with_dotlist(extra)
    saved.resume = str(run_dir)
    saved.ckpt_path = str(ckpt)
    saved.paths.output_dir = str(run_dir)
    return saved


def run_identity(cfg: DictConfig) -> tuple[list[str], str | None]:
    """The run's command-line overrides and experiment preset: this session's, or for a resumed
    run those its first session recorded in ``.hydra/hydra.yaml``."""
    hydra_cfg = HydraConfig.get()
    if cfg.resume:
        saved = Path(cfg.resume) / ".hydra" / "hydra.yaml"
        if saved.is_file():
            hydra_cfg = OmegaConf.load(saved).hydra
        else:
            return [], None
    return list(hydra_cfg.overrides.task), hydra_cfg.runtime.choices.get("experiment")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    summary: RunSummary | None = None
    try:
        if cfg.resume:
            cfg = resume_config(cfg, list(hydra_cfg.overrides.task))
        overrides, experiment = run_identity(cfg)
        summary = RunSummary(
            path=str(Path(cfg.paths.output_dir) / "metrics.json"),
            task=str(cfg.get("task")),
            monitor=cfg.monitor.metric,
            mode=cfg.monitor.mode,
            seed=cfg.get("seed"),
            overrides=overrides,
            # which preset and which row of the study it reproduces (the report matches on it)
            experiment={"name": experiment, "label": cfg.get("label"),
                        "study_config": cfg.get("study_config")},
        )
        validate(cfg)
        return train(cfg, summary)
    except BaseException as exc:
        if summary is not None and not isinstance(exc, SystemExit):
            summary.fail(exc)
        known = isinstance(exc, KNOWN_ERRORS) and os.environ.get("HYDRA_FULL_ERROR") != "1"
        if isinstance(exc, KeyboardInterrupt) or not (known or multirun):
            raise
        if known:
            log.error("%s", exc)
        else:
            log.exception("Job failed: %s", exc)
        if multirun:  # recorded in its metrics.json; the sweep goes on and exits 1 at the end
            return None  # the Optuna sweeper records None as a FAILED trial (NaN would be COMPLETE)
        raise SystemExit(2 if isinstance(exc, ConfigError) else 1) from None


if __name__ == "__main__":
    main()
