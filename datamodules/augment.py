"""The study's train augmentation on whole batches, on whatever device the batch is on.

``augment_batch`` does what ``cifar10.train_transform`` does image by image
(``RandomHorizontalFlip`` then ``RandomResizedCrop(size, scale, ratio, antialias=True)`` on uint8),
with the same distribution:

* crop boxes: torchvision's rejection sampling (10 attempts of area ~ U(scale) x H x W and
  log aspect ratio ~ U(log ratio), the first box that fits; else the central fallback; top/left
  uniform), vectorised over the batch;
* resize: the crop (at most H x W) is upsampled to ``size`` with bilinear interpolation at the
  source positions ``(k + 0.5) * crop / size - 0.5`` clamped to the crop, which is what
  torchvision's antialiased bilinear kernel computes when it enlarges (its triangle filter has
  support 1 and is renormalised at the borders); the result is rounded to uint8 levels like the
  CPU path's uint8 output.

Everything is a handful of batched tensor ops (no Python loop over images), so on a GPU a batch
of 128 CIFAR-10 images costs microseconds instead of the CPU path's per-image work.
"""

from __future__ import annotations

import math

import torch

ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before falling back


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` RandomResizedCrop boxes as int64 tensors ``(top, left, box_height, box_width)``."""
    area = height * width
    u = torch.rand(n, ATTEMPTS, 2, device=device, generator=generator)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect))  # round half to even, as Python's round
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first attempt that fits
    any_fit = fits.any(dim=1)
    w = w.gather(1, first).squeeze(1).long()
    h = h.gather(1, first).squeeze(1).long()

    # torchvision's fallback: a central crop with the ratio clamped into range
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(any_fit, w, fw)
    h = torch.where(any_fit, h, fh)

    offsets = torch.rand(n, 2, device=device, generator=generator)
    top = (offsets[:, 0] * (height - h + 1)).floor().long().clamp_max(height - h)
    left = (offsets[:, 1] * (width - w + 1)).floor().long().clamp_max(width - w)
    top = torch.where(any_fit, top, (height - fh) // 2)
    left = torch.where(any_fit, left, (width - fw) // 2)
    return top, left, h, w


def _source_index(start: torch.Tensor, length: torch.Tensor, size: int):
    """Bilinear source rows (or columns) for resizing ``length`` pixels from ``start`` to ``size``:
    low index, high index (both absolute) and the weight of the high one, each (B, size)."""
    k = torch.arange(size, device=length.device, dtype=torch.float32) + 0.5
    src = (k * (length[:, None].float() / size) - 0.5).clamp_min(0.0)
    low = src.floor()
    weight = src - low
    low = low.long()
    high = torch.minimum(low + 1, length[:, None] - 1)
    return start[:, None] + low, start[:, None] + high, weight


def resized_crop(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Crop box ``b`` of image ``b`` and resize it to ``size`` x ``size`` (bilinear, float32 out,
    same value range as the input). Boxes must lie inside the images and be at most ``size``."""
    b, c, _, w_in = images.shape
    x = images.float()
    r0, r1, wr = _source_index(top, height, size)
    rows = (
        torch.lerp(
            x.gather(2, r0[:, None, :, None].expand(b, c, size, w_in)),
            x.gather(2, r1[:, None, :, None].expand(b, c, size, w_in)),
            wr[:, None, :, None],
        )
    )
    c0, c1, wc = _source_index(left, width, size)
    return torch.lerp(
        rows.gather(3, c0[:, None, None, :].expand(b, c, size, size)),
        rows.gather(3, c1[:, None, None, :].expand(b, c, size, size)),
        wc[:, None, None, :],
    )


def augment_batch(
    images: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 (B, C, size, size) in [0, 1]: random horizontal flip, then
    RandomResizedCrop, per image, as ``cifar10.train_transform`` before its normalisation."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"augment_batch expects uint8 images (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
    n, _, height, width = images.shape
    device = images.device
    flip = torch.rand(n, device=device, generator=generator) < flip_p
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    top, left, h, w = sample_crop_boxes(n, height, width, scale, ratio, device, generator)
    out = resized_crop(images, top, left, h, w, size)
    return out.round_().div_(255.0)  # uint8 levels, as the CPU path's uint8 resize
