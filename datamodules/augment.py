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

Beyond the study: ``policy_transform`` (the per-image policies of ``data.augment``, CPU path),
``erase_batch`` (RandomErasing of a whole batch, the device path's ``data.random_erasing``) and
``mix_batch`` / ``MixCollate`` (MixUp and CutMix of a whole batch with soft targets, seeded by the
batch's augmentation seed; used by both the CPU loader and the device path).
"""

from __future__ import annotations

import math

import numpy as np
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
    rows = torch.lerp(
        x.gather(2, r0[:, None, :, None].expand(b, c, size, w_in)),
        x.gather(2, r1[:, None, :, None].expand(b, c, size, w_in)),
        wr[:, None, :, None],
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


# -- options beyond the study ---------------------------------------------------------------------
POLICIES = ("randaugment", "trivialaugment", "autoaugment")  # data.augment: per image, CPU path only


def policy_transform(name: str):
    """The per-image augmentation policy ``name`` (torchvision v2, on uint8 images):
    ``randaugment`` (2 ops, magnitude 9), ``trivialaugment`` (TrivialAugmentWide) or
    ``autoaugment`` (AutoAugment's CIFAR-10 policy)."""
    from torchvision.transforms import v2

    if name == "randaugment":
        return v2.RandAugment()
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    raise ValueError(f"data.augment={name!r}: must be null or one of {', '.join(POLICIES)}")


ERASE_SCALE = (0.02, 0.33)  # torchvision RandomErasing's defaults
ERASE_RATIO = (0.3, 3.3)


def erase_batch(
    images: torch.Tensor,
    p: float,
    scale: tuple[float, float] = ERASE_SCALE,
    ratio: tuple[float, float] = ERASE_RATIO,
    value: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RandomErasing of each image of a batch (B, C, H, W), as ``v2.RandomErasing(p, scale, ratio,
    value)`` does image by image: with probability ``p``, the first of 10 boxes (area ~ U(scale) H W,
    log aspect ~ U(log ratio), rounded like torchvision, strictly smaller than the image) is set to
    ``value`` at a uniform position; images where no box fits are left as they are. Vectorised."""
    n, _, height, width = images.shape
    device = images.device
    u = torch.rand(n, ATTEMPTS, 2, device=device, generator=generator)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    h = torch.round(torch.sqrt(area * aspect))
    w = torch.round(torch.sqrt(area / aspect))
    fits = (h < height) & (w < width)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    h = h.gather(1, first).squeeze(1).long()
    w = w.gather(1, first).squeeze(1).long()
    draws = torch.rand(n, 3, device=device, generator=generator)
    erase = fits.any(dim=1) & (draws[:, 0] < p)
    top = (draws[:, 1] * (height - h + 1)).floor().long().clamp_max(height - h)
    left = (draws[:, 2] * (width - w + 1)).floor().long().clamp_max(width - w)
    rows = torch.arange(height, device=device)[None, :]
    cols = torch.arange(width, device=device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    mask = (in_rows[:, :, None] & in_cols[:, None, :]) & erase[:, None, None]
    return images.masked_fill(mask[:, None], value)


def mix_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix of a whole batch: float images (B, C, H, W) and int labels (B,) -> mixed
    images and soft targets (B, num_classes), each row a convex combination of two one-hot labels.

    ``mixup`` and ``cutmix`` are the alphas of the Beta(alpha, alpha) mixing weight (0: off); with
    both on, each batch uses one of them with probability 1/2 (as timm). Image ``i`` is mixed with
    image ``i - 1`` (the batch rolled by one, as torchvision's ``v2.MixUp``). CutMix pastes a box
    of area ``(1 - lam) H W`` centred uniformly (clipped at the borders) and its target weight is
    the box's real area. Every draw comes from a NumPy generator seeded by ``seed`` (the batch's
    augmentation seed): the same batch is mixed the same way on any device and worker layout.
    """
    if mixup <= 0 and cutmix <= 0:
        raise ValueError("mix_batch needs mixup > 0 or cutmix > 0")
    rng = np.random.default_rng(None if seed is None else [int(seed), 0x6D6978])  # own stream
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    one_hot = torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float32)
    partner = images.roll(1, 0)
    if use_cutmix:
        height, width = images.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        images = images.clone()
        images[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    else:
        images = images * lam + partner * (1.0 - lam)
    targets = one_hot * lam + one_hot.roll(1, 0) * (1.0 - lam)
    return images, targets


class MixCollate:
    """Collate of ``(image, label, augmentation seed)`` items that mixes the batch
    (:func:`mix_batch`, seeded by the first item's seed); picklable for loader workers."""

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0) -> None:
        self.num_classes, self.mixup, self.cutmix = num_classes, mixup, cutmix

    def __call__(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([item[0] for item in items])
        labels = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)
        seed = items[0][2] if len(items[0]) > 2 else None
        return mix_batch(images, labels, self.num_classes, self.mixup, self.cutmix, seed)
