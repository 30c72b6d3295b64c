"""A weighted mean metric without a device sync per update.

torchmetrics' ``MeanMetric`` checks every update for NaN (``if nans.any()``: a device sync each
training step), and its ``nan_strategy="disable"`` skips the check but also drops the weights
(torchmetrics 1.9), which would make epoch losses plain means of batch means.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class WeightedMean(Metric):
    """sum(value * weight) / sum(weight) over an epoch, summed across processes under DDP."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: torch.Tensor | float = 1.0) -> None:
        value = torch.as_tensor(value, dtype=self.total.dtype, device=self.total.device)
        weight = torch.as_tensor(weight, dtype=self.total.dtype, device=self.total.device)
        weight = torch.broadcast_to(weight, value.shape)
        self.total += (value * weight).sum()
        self.weight += weight.sum()

    def compute(self) -> torch.Tensor:
        return self.total / self.weight


class ExpWeightedMean(WeightedMean):
    """exp of a weighted mean: with the mean NLL per batch weighted by its real-token count, this
    is the perplexity of the whole epoch, exp(total NLL / total real tokens)."""

    def compute(self) -> torch.Tensor:
        return super().compute().exp()
