"""OmegaConf resolvers used by ``conf/hydra/default.yaml`` (registered on import)."""

from __future__ import annotations

import hashlib

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
