"""OmegaConf resolvers used by ``conf/`` (``lmvit.*``; registered on import of ``lmvit``)."""

from __future__ import annotations

import hashlib
import os

from omegaconf import OmegaConf

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


MAX_DEFAULT_WORKERS = 4  # the former fixed default (more: data.num_workers=N)


def default_workers() -> int:
    """``data.num_workers``'s default (``${lmvit.default_workers:}``): one loader worker per usable
    core but one (the training process keeps a core), at most :data:`MAX_DEFAULT_WORKERS`; 0 (load
    in the training process) on one core. Never more than the cores, so torch's "excessive worker
    creation" warning does not fire: 1 on 2 cores, 4 on 6 cores or more."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(MAX_DEFAULT_WORKERS, cores - 1))


OmegaConf.register_new_resolver("lmvit.default_workers", default_workers, replace=True)


def default_precision(accelerator: str = "auto") -> str:
    """``trainer.precision``'s default (``${lmvit.precision:${trainer.accelerator}}``): bf16-mixed on
    a CPU with bf16 instructions, else the study's 32-true (GPUs unchanged): lmvit.hardware."""
    import torch

    from lmvit.hardware import auto_precision

    return auto_precision(str(accelerator), torch.cuda.is_available())[0]


OmegaConf.register_new_resolver("lmvit.precision", default_precision, replace=True)
