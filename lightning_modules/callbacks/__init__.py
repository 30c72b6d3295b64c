"""Lightning callbacks, one module per job:

- :mod:`.run_summary` -- ``metrics.json`` (RunSummary)
- :mod:`.timing`      -- epoch wall-clock and peak memory (EpochTimer)
- :mod:`.divergence`  -- stop at the first NaN/inf loss (FiniteLossGuard)
- :mod:`.resume`      -- RNG and in-epoch metric states in checkpoints (ResumeState)
- :mod:`.dynamics`    -- per-block gradient/weight/update/residual norms every N steps (TrainingDynamics)
"""

from lightning_modules.callbacks.divergence import FiniteLossGuard
from lightning_modules.callbacks.dynamics import TrainingDynamics
from lightning_modules.callbacks.resume import ResumeState
from lightning_modules.callbacks.run_summary import RunSummary
from lightning_modules.callbacks.timing import EpochTimer

__all__ = ["EpochTimer", "FiniteLossGuard", "ResumeState", "RunSummary", "TrainingDynamics"]
