"""Learning-rate schedules, built as ``scheduler(optimizer, total_steps=...)`` by
:meth:`lightning_modules.base.StudyModule.configure_optimizers` (stepped every optimizer step).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from lmvit.settings import FRACTION, PROBABILITY, check_rules

# conf/scheduler/cosine.yaml's settings
SETTINGS = {"warmup_fraction": FRACTION, "min_lr_ratio": PROBABILITY}
PREFIX = "scheduler."


class WarmupCosine:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Linear warm-up from ``1 / (warmup_steps + 1)`` to 1 over the first ``warmup_steps`` steps,
    then a half cosine from 1 down to ``min_lr_ratio`` at ``total_steps``. A plain object (not a
    closure) so that ``LambdaLR.state_dict`` saves it and resumed runs continue the same curve.
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}")
        check_rules({"min_lr_ratio": min_lr_ratio}, SETTINGS, PREFIX)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        decay_steps = self.total_steps - self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.05,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Cosine decay with linear warm-up over ``warmup_fraction`` of ``total_steps``."""
    check_rules({"warmup_fraction": warmup_fraction, "min_lr_ratio": min_lr_ratio}, SETTINGS, PREFIX)
    warmup_steps = int(round(warmup_fraction * total_steps))
    warmup_steps = min(warmup_steps, total_steps - 1)
    return LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps, min_lr_ratio))


def _check_settings(values, prefix: str = PREFIX) -> None:
    check_rules(values, SETTINGS, prefix)


# the rules of a scheduler config, found through its _target_ (StudyModule.check_settings)
cosine_with_warmup.check_settings = _check_settings
