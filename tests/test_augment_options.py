"""Augmentation beyond the study: per-image policies, RandomErasing, batch MixUp/CutMix.

Each option is seeded like the study's augmentation (per image from its own seed, per batch from
the batch's first seed), changes the images, and the device path refuses what it cannot do."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from datamodules.augment import MixCollate, mix_batch
from datamodules.cifar10 import NUM_CLASSES, CIFAR10DataModule, ImageTensorDataset, train_transform
from lmvit.config import validate
from lmvit.errors import ConfigError
from tests.helpers import ROOT, assert_close_rel


def _images(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(NUM_CLASSES, (n,), generator=g)


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_targets_are_convex_combinations_of_the_two_labels(mixup, cutmix):
    images, labels = _images()
    for seed in range(20):
        mixed, targets = mix_batch(images, labels, NUM_CLASSES, mixup, cutmix, seed=seed)
        assert mixed.shape == images.shape and targets.shape == (8, NUM_CLASSES)
        assert_close_rel(targets.sum(dim=1), torch.ones(8))
        assert (targets >= 0).all()
        # all the mass is on the image's own label and on its partner's (the previous image)
        lam = targets[torch.arange(8), labels]
        partner = labels.roll(1, 0)
        same = labels == partner
        expected = torch.nn.functional.one_hot(labels, NUM_CLASSES) * lam[:, None] + torch.nn.functional.one_hot(
            partner, NUM_CLASSES
        ) * (1 - lam[:, None])
        assert_close_rel(targets[~same], expected[~same].float())
        # one mixing weight for the whole batch
        lam_batch = lam[~same]
        assert_close_rel(lam_batch, lam_batch[:1].expand_as(lam_batch))
        lam0 = float(lam_batch[0])
        rolled = images.roll(1, 0)
        if (mixed - images * lam0 - rolled * (1 - lam0)).abs().max() < 1e-5:
            continue  # MixUp: image = lam x_i + (1 - lam) x_{i-1}
        # CutMix: each pixel is the image's own or its partner's, the partner's share is 1 - lam
        from_partner = (mixed == rolled) & (mixed != images)
        assert ((mixed == images) | (mixed == rolled)).all()
        assert_close_rel(from_partner[0, 0].float().mean(), torch.tensor(1 - lam0), rtol=1e-5)


def test_mixing_follows_the_seed():
    images, labels = _images()
    a = mix_batch(images, labels, NUM_CLASSES, 0.8, 1.0, seed=7)
    b = mix_batch(images, labels, NUM_CLASSES, 0.8, 1.0, seed=7)
    c = mix_batch(images, labels, NUM_CLASSES, 0.8, 1.0, seed=8)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a[1], c[1])


@pytest.fixture(scope="module")
def pool(data_dir):
    dm = CIFAR10DataModule(str(data_dir), num_workers=0, train_subset=64)
    dm.prepare_data()
    dm.setup("fit")
    return dm.data_train.images[:16], dm.data_train.labels[:16]


@pytest.mark.parametrize(
    "augment,erasing", [("randaugment", 0.0), ("trivialaugment", 0.0), ("autoaugment", 0.0), (None, 1.0)]
)
def test_per_image_options_are_seeded_and_change_images(pool, augment, erasing):
    images, labels = pool
    study = ImageTensorDataset(images, labels, train_transform())
    dataset = ImageTensorDataset(images, labels, train_transform(augment, erasing))
    keys = [(i, 1000 + i) for i in range(len(labels))]
    first = torch.stack([dataset[k][0] for k in keys])
    again = torch.stack([dataset[k][0] for k in keys])
    torch.testing.assert_close(first, again, rtol=0, atol=0)  # the image's seed decides everything
    other = torch.stack([dataset[(i, 5000 + i)][0] for i in range(len(labels))])
    assert not torch.equal(first, other)
    base = torch.stack([study[k][0] for k in keys])  # same seeds, the study's transform
    assert first.shape == base.shape == (16, 3, 32, 32)
    changed = [not torch.equal(a, b) for a, b in zip(first, base)]
    assert sum(changed) >= 8, f"{augment or 'random erasing'} changed only {sum(changed)} of 16 images"
    if erasing:  # erased boxes hold 0 (the mean after normalisation) over all channels
        assert all(((x == 0).all(dim=0)).sum() > 0 for x in first)


def test_mixed_loader_batches_do_not_depend_on_workers(data_dir):
    def batches(workers):
        dm = CIFAR10DataModule(
            str(data_dir),
            batch_size=8,
            num_workers=workers,
            train_subset=32,
            augment="autoaugment",
            random_erasing=0.5,
            mixup=0.8,
            cutmix=1.0,
        )
        dm.setup("fit")
        return list(dm.train_dataloader())

    zero, two = batches(0), batches(2)
    assert len(zero) == 4
    for (x0, t0), (x2, t2) in zip(zero, two):
        torch.testing.assert_close(x0, x2, rtol=0, atol=0)
        torch.testing.assert_close(t0, t2, rtol=0, atol=0)
        assert t0.shape == (8, NUM_CLASSES) and t0.is_floating_point()


def test_mix_collate_seeds_from_the_first_item():
    images, labels = _images(4)
    items = [(images[i], labels[i], 123 + i) for i in range(4)]
    x, t = MixCollate(NUM_CLASSES, mixup=0.8)(items)
    ex, et = mix_batch(images, labels, NUM_CLASSES, mixup=0.8, seed=123)
    torch.testing.assert_close(x, ex, rtol=0, atol=0)
    torch.testing.assert_close(t, et, rtol=0, atol=0)


def test_device_path_erases_and_mixes_batches_with_their_seed(data_dir):
    dm = CIFAR10DataModule(
        str(data_dir),
        batch_size=8,
        num_workers=0,
        train_subset=32,
        device_augment=True,
        random_erasing=1.0,
        mixup=0.8,
        cutmix=1.0,
    )
    dm.setup("fit")
    keys = next(iter(dm.train_dataloader()))
    x, t = dm.on_after_batch_transfer(keys, 0)
    x2, t2 = dm.on_after_batch_transfer(keys, 0)
    assert x.shape == (8, 3, 32, 32) and t.shape == (8, NUM_CLASSES)
    assert_close_rel(t.sum(dim=1), torch.ones(8))
    torch.testing.assert_close(t, t2, rtol=0, atol=0)
    torch.testing.assert_close(x, x2, rtol=0, atol=0)


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", "trivialaugment"])
def test_device_augment_refuses_per_image_policies_in_one_line(data_dir, policy):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        overrides = [f"data.data_dir={data_dir}", "data.device_augment=true", f"data.augment={policy}"]
        cfg = compose("train", overrides=overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert message.startswith(f"data.augment='{policy}' is not supported with data.device_augment=true")
    assert "\n" not in message
    # random erasing, MixUp and CutMix are fine on the device path
    validate(OmegaConf.merge(cfg, {"data": {"augment": None, "random_erasing": 0.25, "mixup": 0.8, "cutmix": 1.0}}))


def _boxes(erased: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image of a (N, 1, H, W) 0/1 erased mask: erased?, box area, box centre row."""
    mask = erased[:, 0].bool()
    rows = torch.arange(mask.shape[1], dtype=torch.float32)
    area = mask.flatten(1).sum(1).float()
    centre = (mask.any(2).float() * rows).sum(1) / mask.any(2).sum(1).clamp_min(1)
    return area > 0, area, centre


def test_device_random_erasing_matches_torchvision_distribution():
    from torchvision.transforms import v2

    from datamodules.augment import erase_batch

    n, p = 4000, 0.5
    ones = torch.ones(n, 1, 32, 32)
    torch.manual_seed(0)
    reference = v2.RandomErasing(p=p, value=0)
    cpu = 1 - torch.stack([reference(x) for x in ones])
    dev = 1 - erase_batch(ones, p, generator=torch.Generator().manual_seed(0))
    (cpu_on, cpu_area, cpu_row), (dev_on, dev_area, dev_row) = _boxes(cpu), _boxes(dev)
    assert abs(cpu_on.float().mean() - dev_on.float().mean()) < 0.03
    assert abs(dev_on.float().mean() - p) < 0.03
    assert_close_rel(dev_area[dev_on].mean(), cpu_area[cpu_on].mean(), rtol=0.05)
    assert_close_rel(dev_row[dev_on].mean(), cpu_row[cpu_on].mean(), rtol=0.05)
    # erased regions are rectangles
    for mask in dev[dev_on][:50, 0].bool():
        rows, cols = mask.any(1), mask.any(0)
        assert mask.sum() == rows.sum() * cols.sum()
    again = 1 - erase_batch(ones, p, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dev, again)


@pytest.mark.parametrize(
    "key,value,allowed",
    [
        ("data.augment", "autoaugmentt", "null or one of randaugment, trivialaugment, autoaugment"),
        ("data.random_erasing", 1.5, "a number in [0, 1]"),
        ("data.mixup", -1, "a number >= 0"),
        ("model.label_smoothing", 1.0, "a number in [0, 1)"),
        ("model.output_dropout", 1.0, "a number in [0, 1)"),
        ("callbacks.ema.decay", 1.0, "null (off) or a number in (0, 1)"),
    ],
)
def test_new_settings_are_validated(key, value, allowed):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        model = ["model=lstm"] if key == "model.output_dropout" else []
        cfg = compose("train", overrides=[*model, f"data.data_dir={ROOT}"])
    OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert f"Invalid setting {key}={value!r}: must be {allowed}" in str(info.value)
