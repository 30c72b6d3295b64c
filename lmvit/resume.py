"""Resuming a run in place: ``python train.py resume=<run dir> [key=value ...]``."""

from __future__ import annotations

import shutil
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lmvit.errors import ConfigError
from lmvit.runs import (
    CRASHED,
    FAILED,
    FINISHED,
    check_checkpoint,
    checkpoint_damage,
    find_run_dirs,
    load_metrics,
    read_hydra,
)

# what a rerun sweep does with a job it finds in its directory, by the job's metrics.json status
# (lmvit.runs: FINISHED skipped; FAILED skipped, or started again with rerun_failed=true; CRASHED
# continued from its last.ckpt like a stopped run, started again if that file is damaged)
# trained but killed while it tested (a SIGKILL, a lost machine): metrics.json says "completed" from
# the end of fit, and the test result never came; its resume only tests it (see :func:`run_status`)
UNTESTED = "untested"
# what a published run keeps (the reports read these; no checkpoints, no event files)
RECORDS = ("metrics.json", "config.yaml", "dynamics.jsonl")


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
    if any(o.startswith("ckpt_path=") for o in extra) and saved.ckpt_path:  # an earlier checkpoint
        ckpt = Path(str(saved.ckpt_path)).expanduser().resolve()
    check_checkpoint(ckpt, lambda other: f"python train.py resume={cfg.resume} ckpt_path={other}")
    saved.resume = str(run_dir)
    saved.ckpt_path = str(ckpt)
    saved.paths.output_dir = str(run_dir)
    return saved


def run_identity(cfg: DictConfig) -> tuple[list[str], dict[str, str]]:
    """The run's command-line overrides and config-group choices (``{"optimizer": "adamw",
    "experiment": ..., ...}``): this session's, or for a resumed run those its first session
    recorded in ``.hydra/hydra.yaml``."""
    hydra_cfg = HydraConfig.get()
    if cfg.resume:
        hydra_cfg = read_hydra(cfg.resume)
        if hydra_cfg is None:
            return [], {}
    # unresolved: an override may hold an interpolation (e.g. +callbacks.x.seed=${seed})
    choices = OmegaConf.to_container(hydra_cfg.runtime.choices, resolve=False)
    overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
    return [str(o) for o in overrides], {str(k): v for k, v in choices.items()}


def previous_metrics(run_dir: Path) -> dict:
    """The ``metrics.json`` an earlier session of the run wrote ({} when none is readable)."""
    try:
        return load_metrics(Path(run_dir))
    except (OSError, ValueError):
        return {}


def run_status(metrics: dict, config: DictConfig | dict | None) -> str | None:
    """A run's status as a rerun reads it: its ``metrics.json``'s, except :data:`UNTESTED` for a run
    whose training completed, whose ``config`` asks for a test (``test=true``) and whose test result
    is missing. Its resume (``resume=``, or the rerun sweep) only tests it."""
    status = metrics.get("status")
    wants_test = config is not None and bool(OmegaConf.select(OmegaConf.create(config), "test", default=False))
    if status in FINISHED and wants_test and not metrics.get("test"):
        return UNTESTED
    return status


def saved_status(run_dir: Path) -> str | None:
    """:func:`run_status` of the run saved in ``run_dir`` (``metrics.json`` and ``config.yaml``)."""
    config = Path(run_dir) / "config.yaml"
    return run_status(previous_metrics(run_dir), OmegaConf.load(config) if config.is_file() else None)


def sweep_job_plan(job_dir: Path, rerun_failed: bool) -> str:
    """What a job of a rerun sweep does with what it finds in its own directory:

    ``skip`` (it completed, or it failed and ``rerun_failed`` is false), ``resume`` (it was killed,
    stopped or :data:`CRASHED`, in training or in its test: its ``last.ckpt`` continues it exactly as
    ``resume=`` does)
    or ``new`` (nothing to continue from, or a failed job asked to run again). Job directories are
    named by their overrides (``hydra.job.override_dirname``), so a job always finds its own earlier
    session."""
    status = saved_status(job_dir)
    if status in FINISHED or (status in FAILED and not rerun_failed):
        return "skip"
    last = job_dir / "checkpoints" / "last.ckpt"
    resumable = last.is_file() and (job_dir / "config.yaml").is_file()
    if status == CRASHED and resumable:  # the failure may have cut the checkpoint it was writing
        resumable = checkpoint_damage(last) is None
    if status not in FAILED and resumable:
        return "resume"
    return "new"


def nothing_left(cfg: DictConfig, previous: dict) -> bool:
    """A resumed run that already completed the epochs (and steps) it is asked for."""
    if run_status(previous, cfg) not in FINISHED:  # stopped, failed, or its test still to do
        return False
    max_steps = cfg.trainer.get("max_steps", -1)
    steps_done = (previous.get("history") or [{}])[-1].get("step", 0)
    epochs_done = previous.get("epochs", 0) >= (cfg.trainer.max_epochs or 0)
    return epochs_done and (max_steps in (-1, None) or steps_done >= max_steps)


def publish_records(src: Path, dest: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    """Copy the records of every run below ``src`` that has its result (:data:`FINISHED` or
    :data:`FAILED`: what a rerun sweep skips) to the same relative path below ``dest``:
    :data:`RECORDS` and ``.hydra/``. A record copied before is replaced; runs still running,
    stopped or :data:`UNTESTED`, and runs below an ``exclude`` folder of ``src``, are left out. Copied back into an
    empty log folder, published records make a rerun sweep skip those runs. Returns the targets."""
    src, copied = Path(src), []
    skip = [(src / folder).resolve() for folder in exclude]
    for run in find_run_dirs(src):
        if saved_status(run) not in FINISHED + FAILED:
            continue
        if any(run.resolve().is_relative_to(folder) for folder in skip):
            continue
        target = Path(dest) / run.relative_to(src.resolve())
        target.mkdir(parents=True, exist_ok=True)
        for name in RECORDS:
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
        if (run / ".hydra").is_dir():
            shutil.copytree(run / ".hydra", target / ".hydra", dirs_exist_ok=True)
        copied.append(target)
    return copied
