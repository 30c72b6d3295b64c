"""Lightning callbacks, one module per job:

- :mod:`.run_summary` -- ``metrics.json`` (RunSummary)
- :mod:`.timing`      -- epoch wall-clock and peak memory (EpochTimer)
- :mod:`.divergence`  -- stop at the first NaN/inf loss (FiniteLossGuard)
- :mod:`.resume`      -- RNG and in-epoch metric states in checkpoints (ResumeState)
- :mod:`.lr_monitor`  -- the learning rate in every run (LearningRateMonitor)
- :mod:`.progress_log` -- progress lines where no terminal shows a bar (ProgressLog)
- :mod:`.inspection`  -- ViT attention maps / statistics and confusion matrix (AttentionInspection, ClassInspection)
- :mod:`.text_samples` -- LSTM text samples in TensorBoard (TextSamples)
- :mod:`.ema`         -- an EMA of the weights, validated as ``val/<metric>_ema`` (EMA)
- :mod:`.optimizer_mode` -- Schedule-Free's eval/train modes around evaluation and checkpoints (OptimizerModes)
- :mod:`.dynamics`    -- per-block gradient/weight/update/residual norms every N steps (TrainingDynamics)
"""

from lightning_modules.callbacks.divergence import FiniteLossGuard
from lightning_modules.callbacks.dynamics import TrainingDynamics
from lightning_modules.callbacks.ema import EMA
from lightning_modules.callbacks.optimizer_mode import OptimizerModes
from lightning_modules.callbacks.resume import ResumeState
from lightning_modules.callbacks.run_summary import RunSummary
from lightning_modules.callbacks.timing import EpochTimer

__all__ = ["EMA", "EpochTimer", "FiniteLossGuard", "OptimizerModes", "ResumeState", "RunSummary", "TrainingDynamics"]
