"""Resuming a run in place: ``python train.py resume=<run dir> [key=value ...]``."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lmvit.errors import ConfigError
from lmvit.runs import check_checkpoint


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
        saved = Path(cfg.resume) / ".hydra" / "hydra.yaml"
        if saved.is_file():
            hydra_cfg = OmegaConf.load(saved).hydra
        else:
            return [], {}
    choices = {str(k): v for k, v in hydra_cfg.runtime.choices.items()}
    return list(hydra_cfg.overrides.task), choices
