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
IN_PROCESS_UP_TO = 2  # cores on which loading in the training process is faster than a worker


def default_workers() -> int:
    """``data.num_workers``'s default (``${lmvit.default_workers:}``): one loader worker per usable
    core but one (the training process keeps a core), at most :data:`MAX_DEFAULT_WORKERS`, and 0
    (load in the training process) on :data:`IN_PROCESS_UP_TO` cores or fewer: on 2 cores a worker
    takes a core from the two intra-op threads of the step, and the bf16 ViT step fed by 1 worker
    took 1.02x (quiet) to 1.11x (under load) as long as fed in-process (paired,
    ``bench/cpu_threads.py``, BENCHMARKS.md). Never
    more than the cores, so torch's "excessive worker creation" warning does not fire."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores <= IN_PROCESS_UP_TO else min(MAX_DEFAULT_WORKERS, cores - 1)


OmegaConf.register_new_resolver("lmvit.default_workers", default_workers, replace=True)


def default_precision(accelerator: str = "auto") -> str:
    """``trainer.precision``'s default (``${lmvit.precision:${trainer.accelerator}}``): bf16-mixed on
    a CPU with bf16 instructions, else the study's 32-true (GPUs unchanged): lmvit.hardware."""
    import torch

    from lmvit.hardware import auto_precision

    return auto_precision(str(accelerator), torch.cuda.is_available())[0]


OmegaConf.register_new_resolver("lmvit.precision", default_precision, replace=True)
