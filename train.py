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
import multiprocessing
from pathlib import Path
from typing import NoReturn

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

import lmvit.resolvers  # noqa: F401  (registers the ${lmvit.*} resolvers of conf/hydra)
from lightning_modules.callbacks import RunSummary
from lightning_modules.callbacks.hooks import skip_inherited_batch_hooks
from lightning_modules.callbacks.stop import StopCheckpoint, StopLatch
from lightning_modules.callbacks.timing import usable_cpus
from lightning_modules.optim import optimizer_kernel
from lmvit.cli import ErrorPolicy, allow_null_groups, quiet_libraries, refuse_unknown_choices
from lmvit.config import print_config, reference_config, run_hparams, validate
from lmvit.distributed import check_ddp_launch
from lmvit.hardware import auto_precision
from lmvit.resume import nothing_left, previous_metrics, resume_config, run_identity, sweep_job_plan

log = logging.getLogger("train")


def train(cfg: DictConfig, summary: RunSummary, choices: dict | None = None) -> float | None:
    """Fit (and test) one configuration; returns the best value of the monitored metric. A SIGTERM
    stops it at the next safe point and exits 128 + 15, whenever it lands (``StopLatch``)."""
    with StopLatch() as latch:
        return _train(cfg, summary, choices, latch)


def _train(cfg: DictConfig, summary: RunSummary, choices: dict | None, latch: StopLatch) -> float | None:
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
    kernel = optimizer_kernel(
        model.optimizer_factory, trainer.strategy.root_device.type, bool(trainer.gradient_clip_val)
    )
    log.info(speed_setting(cfg, summary, kernel))
    stop = next((c for c in callbacks if isinstance(c, StopCheckpoint)), None)
    if stop is not None:  # what a run stopped by SIGTERM / Ctrl-C prints to continue
        stop.resume_hint = resume_command(cfg)
    for logger in loggers:  # HParams tab: the run shows with its hyperparameters from the start
        logger.log_hyperparams(run_hparams(cfg, choices))
    if latch.signal is not None:  # stopped while setting up: nothing trained, a rerun starts it afresh
        log.warning("Stopped by SIGTERM before training started; continue with: %s", resume_command(cfg))
        raise SystemExit(latch.exit_code)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    except SIGTERMException:  # stopped: checkpoint saved, metrics.json says interrupted
        stopped(stop)
    if summary.summary["status"] != "completed":  # fit stopped early (e.g. Ctrl-C)
        return None
    if cfg.test:
        if stop is not None:  # trained: a run stopped or killed from here on resumes here and only tests
            trainer.save_checkpoint(stop.dirpath / "last.ckpt")
        if latch.signal is not None:  # the stop landed after training's last check: no test now
            stop_before_test(summary, stop, latch, cfg)
        has_best = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
        try:
            trainer.test(model, datamodule=datamodule, ckpt_path=has_best or None)
        except SIGTERMException:  # stopped while testing: last.ckpt saved, "interrupted"; a resume tests it
            stopped(stop)
    for logger in loggers:  # HParams tab: the final metrics beside the hyperparameters
        logger.log_metrics(hparam_metrics(summary.summary))
        logger.finalize("success")
    log.info("Run directory: %s", output_dir)
    if latch.signal is not None:  # it landed in the last test batch (or after training, without a test)
        log.warning("Stopped by SIGTERM after this run finished; continue with: %s", resume_command(cfg))
        raise SystemExit(latch.exit_code)  # a sweep starts no further job
    return summary.summary["best"].get(cfg.monitor.metric)


def stopped(stop: StopCheckpoint | None, code: int | None = None) -> NoReturn:
    """Exit 128 + the signal after a stop (Lightning's: ``StopCheckpoint`` saved ``last.ckpt``)."""
    # loader workers ignore SIGTERM (so a signal to the whole group cannot kill them before the
    # checkpoint): end them here, or multiprocessing's exit handler waits for them forever
    for worker in multiprocessing.active_children():
        worker.kill()
    raise SystemExit(code or (stop.exit_code if stop is not None else 143)) from None


def stop_before_test(summary: RunSummary, stop: StopCheckpoint | None, latch: StopLatch, cfg) -> NoReturn:
    """A SIGTERM after the last check of training (Lightning let ``fit`` end): the run is trained
    but not tested. With ``StopCheckpoint`` (its ``last.ckpt`` saved after fit), mark it
    ``interrupted``: the resumed run (or rerun sweep) restores it, finds training done and tests it."""
    if stop is not None:
        summary.fail(SIGTERMException(), status="interrupted")
        log.warning(
            "Stopped by SIGTERM after training, before the test; checkpoint saved to %s; continue with: %s",
            stop.dirpath / "last.ckpt",
            resume_command(cfg),
        )
    stopped(stop, latch.exit_code)


def hparam_metrics(summary: dict) -> dict[str, float]:
    metrics = {**summary["final"], **summary["test"]}
    for key, value in summary["best"].items():
        if key != "epoch":
            metrics[f"best/{key}"] = value
    return {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, float)}


def speed_setting(cfg: DictConfig, summary: RunSummary, kernel: str) -> str:
    """One line: the precision, compile mode and optimizer kernel this run uses, and why; recorded
    in metrics.json."""
    import torch

    precision = str(cfg.trainer.precision)
    auto, why = auto_precision(str(cfg.trainer.accelerator), torch.cuda.is_available())
    compile_mode = (cfg.model.get("compile_mode") or "default") if cfg.model.get("compile") else "off"
    summary.record("precision", precision)
    summary.record("compile", compile_mode)
    summary.record("optimizer_kernel", kernel)
    reason = why if precision == auto else "trainer.precision as set"
    return f"Precision {precision} ({reason}); compile {compile_mode}; optimizer kernel {kernel}"


def fit_workers_to_jobs(cfg: DictConfig, hydra_cfg) -> None:
    """Jobs run side by side (``hydra/launcher=joblib``) share the cores: each job's loader workers
    are capped so that jobs x (1 + workers) stays within the cores, said in one line."""
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None)
    workers = OmegaConf.select(cfg, "data.num_workers", default=None)
    if hydra_cfg.mode != RunMode.MULTIRUN or not n_jobs or workers is None:
        return
    cores = usable_cpus()
    jobs = cores if n_jobs < 0 else min(n_jobs, cores)
    cap = max(0, cores // jobs - 1)
    if workers > cap:
        log.info("data.num_workers %d -> %d: %d jobs side by side share %d cores", workers, cap, jobs, cores)
        cfg.data.num_workers = cap


def resume_command(cfg: DictConfig) -> str:
    """The command that continues this run (or its sweep) after a stop."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"the same command with hydra.sweep.dir={hydra_cfg.sweep.dir}"
    return f"python train.py resume={cfg.paths.output_dir}"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    with ErrorPolicy(multirun=multirun) as policy:
        policy.output_dir = Path(hydra_cfg.runtime.output_dir)  # removed if the run is refused
        if multirun and not cfg.resume:  # a rerun sweep: each job continues what it finds in its directory
            job_dir = Path(hydra_cfg.runtime.output_dir)
            plan = sweep_job_plan(job_dir, bool(cfg.rerun_failed))
            if plan == "skip":
                done = previous_metrics(job_dir)
                log.info(
                    "Skipped %s: %s in an earlier session of this sweep%s",
                    job_dir.name,
                    done.get("status"),
                    "" if done.get("status") == "completed" else " (rerun_failed=true runs it again)",
                )
                return (done.get("best") or {}).get(cfg.monitor.metric)
            if plan == "resume":
                log.info("Resuming %s from its last checkpoint", job_dir.name)
                cfg.resume = str(job_dir)
        previous = {}
        if cfg.resume:
            cfg = resume_config(cfg, [] if multirun else list(hydra_cfg.overrides.task))
            previous = previous_metrics(Path(cfg.resume))
            if nothing_left(cfg, previous):
                log.info(
                    "Nothing to do: %s completed its %d epochs (raise trainer.max_epochs to train longer)",
                    cfg.resume,
                    previous.get("epochs", 0),
                )
                return (previous.get("best") or {}).get(cfg.monitor.metric)
        fit_workers_to_jobs(cfg, hydra_cfg)
        summary = run_summary(cfg, previous)
        policy.on_error = summary.fail  # a job that fails, even on a bad setting, says so in metrics.json
        reference = (
            None if cfg.resume else reference_config(list(hydra_cfg.overrides.task), dict(hydra_cfg.runtime.choices))
        )
        validate(cfg, reference)
        return train(cfg, summary, run_identity(cfg)[1])
    return None  # a multirun job that failed (recorded; the sweep goes on)


def run_summary(cfg: DictConfig, previous: dict | None = None) -> RunSummary:
    """The run's ``metrics.json`` writer; ``previous``: what an earlier session of a resumed run wrote."""
    overrides, choices = run_identity(cfg)
    return RunSummary(
        previous=previous,
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
    quiet_libraries()
    allow_null_groups()  # logger=null -> ~logger
    refuse_unknown_choices()  # budget=bogus -> one line naming the options
    main()
