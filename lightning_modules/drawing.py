"""Pictures for TensorBoard's IMAGES tab: attention maps over images, drawn with torch alone
(:func:`overlay_grid`, :func:`tile_grid`), and with matplotlib (Agg, no display) the confusion
matrix and the most confident mistakes (:func:`draw_confusion`, :func:`draw_misclassified`)."""

from __future__ import annotations

import math

import numpy as np
import torch


def _display(images: torch.Tensor) -> np.ndarray:
    """Normalised images (B, C, H, W) -> (B, H, W, C) in [0, 1], each stretched to its own range."""
    x = images.detach().float().cpu()
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-8)).permute(0, 2, 3, 1).numpy()


def heat_colors(x: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] (..., H, W) -> a black-red-yellow-white heat map (..., 3, H, W)."""
    return torch.stack([(3 * x).clamp(0, 1), (3 * x - 1).clamp(0, 1), (3 * x - 2).clamp(0, 1)], dim=-3)


def overlay_grid(images: torch.Tensor, maps: list[torch.Tensor], scale: int = 4, alpha: float = 0.6) -> torch.Tensor:
    """A (3, H, W) picture in [0, 1], drawn with torch alone (milliseconds, no matplotlib): one row per
    image, its columns the image then each map ((batch, patches) tensors) over it, each map stretched to
    its own range and upsampled bilinearly over the patches."""
    pictures = torch.from_numpy(_display(images)).permute(0, 3, 1, 2)  # (B, 3, H, W)
    size = pictures.shape[-1]
    cells = [pictures]
    for m in maps:
        m = m.detach().float().cpu()
        grid = math.isqrt(m.shape[-1])
        m = m.reshape(-1, 1, grid, grid)
        lo, hi = m.amin(dim=(2, 3), keepdim=True), m.amax(dim=(2, 3), keepdim=True)
        m = torch.nn.functional.interpolate(
            (m - lo) / (hi - lo).clamp_min(1e-12), size=(size, size), mode="bilinear", align_corners=False
        )[:, 0]
        cells.append((1 - alpha) * pictures + alpha * heat_colors(m.clamp(0, 1)))
    return tile_grid(torch.stack(cells, dim=1).flatten(0, 1), len(cells), scale)


def tile_grid(tiles: torch.Tensor, cols: int, scale: int = 1, pad: int = 1) -> torch.Tensor:
    """(n, 3, H, W) -> one (3, rows x (H*scale + 2 pad), cols x (W*scale + 2 pad)) picture, row-major, white lines
    between tiles (one reshape: no per-tile copies)."""
    n = tiles.shape[0]
    rows = -(-n // cols)
    if rows * cols > n:
        tiles = torch.cat([tiles, tiles.new_ones((rows * cols - n, *tiles.shape[1:]))])
    tiles = tiles.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    tiles = torch.nn.functional.pad(tiles, (pad, pad, pad, pad), value=1.0)
    h, w = tiles.shape[-2:]
    return tiles.reshape(rows, cols, 3, h, w).permute(2, 0, 3, 1, 4).reshape(3, rows * h, cols * w).contiguous()


def _figure(rows: int, cols: int, cell: float = 1.3):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cols * cell, rows * cell + 0.3), dpi=80)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def render(fig, tight: bool = True) -> np.ndarray:
    """A matplotlib figure -> (H, W, 3) uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    if tight:
        fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def draw_maps(images: torch.Tensor, maps: list[torch.Tensor], titles: list[str]) -> np.ndarray:
    """Each image (rows) beside each heat map (columns; (batch, patches) tensors) drawn over it."""
    pictures = _display(images)
    size = pictures.shape[1]
    fig, axes = _figure(len(pictures), len(maps) + 1)
    for i, picture in enumerate(pictures):
        axes[i, 0].imshow(picture)
        for j, m in enumerate(maps):
            grid = math.isqrt(m.shape[-1])
            heat = m[i].detach().float().cpu().reshape(grid, grid).numpy()
            axes[i, j + 1].imshow(picture)
            axes[i, j + 1].imshow(heat, cmap="inferno", alpha=0.6, extent=(0, size, size, 0), interpolation="bilinear")
    axes[0, 0].set_title("image", fontsize=8)
    for j, title in enumerate(titles):
        axes[0, j + 1].set_title(title, fontsize=8)
    return render(fig)


def draw_confusion(matrix: torch.Tensor, names: list[str]) -> np.ndarray:
    from matplotlib.figure import Figure

    m = matrix.detach().cpu().numpy()
    n = len(names)
    fig = Figure(figsize=(1.6 + 0.5 * n, 1.6 + 0.5 * n), dpi=80)
    margin = 1.5 / (1.6 + 0.5 * n)  # room for the class names (no tight_layout: it costs more than the drawing)
    ax = fig.add_axes((margin, margin, 0.97 - margin, 0.93 - margin))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = m.max() if m.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(int(m[i, j])),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if m[i, j] > top / 2 else "black",
            )
    acc = np.trace(m) / max(m.sum(), 1)
    ax.set_title(f"validation: {int(m.sum())} images, accuracy {acc:.3f}", fontsize=9)
    return render(fig, tight=False)


def draw_misclassified(images: torch.Tensor, true: list[str], pred: list[str], conf: list[float]) -> np.ndarray:
    """The images in a grid (one matplotlib axes: fast) captioned ``true -> predicted`` and the confidence."""
    from matplotlib.figure import Figure

    cols, scale, pad = min(8, max(len(images), 1)), 3, 12
    pictures = torch.from_numpy(_display(images)).permute(0, 3, 1, 2)
    grid = tile_grid(pictures, cols, scale, pad).permute(1, 2, 0).numpy()
    tile = pictures.shape[-1] * scale + 2 * pad
    fig = Figure(figsize=(grid.shape[1] / 80, grid.shape[0] / 80), dpi=80)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    for k in range(len(images)):
        x, y = (k % cols) * tile + tile / 2, (k // cols) * tile + pad - 2
        ax.text(x, y, f"{true[k]} -> {pred[k]} {conf[k]:.2f}", ha="center", va="bottom", fontsize=7)
    return render(fig, tight=False)
