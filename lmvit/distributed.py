"""Running one job on several processes (Lightning DDP) under Hydra: checks that fail early.

Lightning starts DDP processes in one of two ways:
- a cluster (SLURM via ``hydra/launcher=slurm``, torchrun, ...) starts one process per device and
  Lightning joins them (``cluster_environment.creates_processes_externally``);
- otherwise Lightning's ``_SubprocessScriptLauncher`` re-runs this script's command line once per
  extra device, adding ``hydra.run.dir=<rank 0's run dir>`` so all ranks share one run directory.

The second way cannot work inside a Hydra multirun: the command line is the whole sweep, so each
extra process would start the sweep again. :func:`check_ddp_launch` refuses that case.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from pytorch_lightning.utilities import rank_zero_warn

from lmvit.errors import ConfigError


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_ddp_launch(trainer: pl.Trainer) -> None:
    """Raise :class:`ConfigError` if Lightning would re-run a Hydra sweep's command line per device."""
    launcher = trainer.strategy.launcher
    if (
        isinstance(launcher, _SubprocessScriptLauncher)
        and not launcher.cluster_environment.creates_processes_externally
        and _in_multirun()
    ):
        raise ConfigError(
            f"Invalid setting trainer.devices={trainer.num_devices} with trainer.strategy=ddp in a "
            "multirun (-m): Lightning starts the extra DDP processes by re-running the command line, "
            "which here is the whole sweep. Run each configuration without -m, or sweep on SLURM "
            "with hydra/launcher=slurm (SLURM starts one process per device), or use "
            "trainer.devices=1 for the sweep."
        )


def warn_uneven_shards(name: str, size: int, world_size: int, fix: str) -> None:
    """Warn when Lightning's DistributedSampler will repeat items of an evaluation set.

    With ``W`` processes the sampler pads the set to a multiple of ``W`` by repeating its first items,
    so val/test metrics then count those items twice and differ (slightly) from a single-process
    evaluation. With a size divisible by ``W`` the shards partition the set exactly.
    """
    if world_size > 1 and size % world_size:
        repeated = world_size - size % world_size
        rank_zero_warn(
            f"The {name} set has {size} items, not divisible by the {world_size} DDP processes: "
            f"Lightning's DistributedSampler repeats {repeated} of them, so {name} metrics differ "
            f"slightly from a single-process evaluation. {fix}"
        )
