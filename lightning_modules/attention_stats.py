"""Attention statistics of the ViT: pure functions on (batch, heads, tokens, tokens) attention
weights, [cls] first (used by :class:`lightning_modules.callbacks.inspection.AttentionInspection`,
bench/inspection.py and the notebook).

- :func:`cls_attention`: the [cls] token's attention over the patches, renormalised;
- :func:`attention_entropy`: the entropy (nats) of each query's attention;
- :func:`mean_attention_distance`: the expected distance in pixels between a patch query and the
  patches it attends to (ViT paper, fig. 7; [cls] left out, weights renormalised);
- :func:`attention_rollout`: Abnar & Zuidema 2020, per layer ``0.5 * mean_heads(A) + 0.5 * I``,
  rows renormalised, multiplied through the layers; the [cls] row over the patches.
"""

from __future__ import annotations

import math

import torch


def cls_attention(weights: torch.Tensor) -> torch.Tensor:
    """The [cls] query's attention over the patches: (batch, heads, patches); sums to <= 1 ([cls] itself left out)."""
    return weights[:, :, 0, 1:]


def attention_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each query's attention distribution, averaged over batch and queries: (heads,)."""
    p = weights.double()
    return -(p * p.clamp_min(1e-30).log()).sum(-1).mean(dim=(0, 2)).float()


def patch_distances(grid: int, patch_size: int) -> torch.Tensor:
    """(grid², grid²) pixel distances between the centres of the patches of a grid x grid image (row-major)."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).double() * patch_size
    return torch.cdist(centres, centres)


def mean_attention_distance(weights: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Expected pixel distance from each patch query to the patches it attends to ([cls] out, weights over
    patches renormalised), averaged over batch and queries: (heads,)."""
    patches = weights[:, :, 1:, 1:].double()
    patches = patches / patches.sum(-1, keepdim=True).clamp_min(1e-30)
    grid = math.isqrt(patches.shape[-1])
    dist = patch_distances(grid, patch_size).to(patches.device)
    return (patches * dist).sum(-1).mean(dim=(0, 2)).float()


def attention_rollout(weights: list[torch.Tensor]) -> torch.Tensor:
    """[cls]'s rolled-out attention over the patches, a distribution per image: (batch, patches), rows sum to 1.

    Per layer ``A = 0.5 * mean_heads(W) + 0.5 * I`` (the residual path), rows renormalised; the product
    ``A_L ... A_1``'s [cls] row without its [cls] entry, renormalised."""
    rollout = None
    for w in weights:
        a = w.double().mean(dim=1)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    cls = rollout[:, 0, 1:]
    return (cls / cls.sum(-1, keepdim=True)).float()
