"""CIFAR-10 data module on the real data in DATA_DIR."""

import shutil

import pytest
import torch
from torchvision.transforms import v2

from datamodules import cifar10
from datamodules.cifar10 import (
    FOLDER,
    MEAN,
    STD,
    CIFAR10DataModule,
    ImageTensorDataset,
    eval_transform,
    load_batch,
    train_transform,
)
from lmvit.errors import DatasetError


@pytest.fixture(scope="module")
def datamodule(data_dir):
    dm = CIFAR10DataModule(str(data_dir), batch_size=256, num_workers=0, seed=42)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


def test_split_sizes_and_no_overlap(datamodule):
    assert len(datamodule.data_train) == 45_000
    assert len(datamodule.data_val) == 5_000
    assert len(datamodule.data_test) == 10_000
    train, val = set(datamodule.train_indices.tolist()), set(datamodule.val_indices.tolist())
    assert not train & val
    assert train | val == set(range(50_000))


def test_split_depends_on_the_seed_only(data_dir):
    a = CIFAR10DataModule(str(data_dir), seed=42).split_indices(50_000)
    b = CIFAR10DataModule(str(data_dir), seed=42, batch_size=7).split_indices(50_000)
    c = CIFAR10DataModule(str(data_dir), seed=43).split_indices(50_000)
    assert torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_labels_are_balanced_in_test(datamodule):
    counts = torch.bincount(datamodule.data_test.labels, minlength=10)
    assert counts.tolist() == [1000] * 10


def test_normalised_batches_are_near_zero_mean_unit_std(datamodule):
    images, labels = next(iter(datamodule.val_dataloader()))
    assert images.shape == (256, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    x = torch.cat([datamodule.data_val[i][0][None] for i in range(2000)])
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    assert mean.abs().max() < 0.05, mean
    assert (std - 1).abs().max() < 0.05, std  # JPEG copy: std a little under the official


def test_raw_pixels_match_published_statistics(datamodule):
    raw = datamodule.data_test.images.float() / 255
    mean = raw.mean(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.tensor(MEAN), atol=0.01, rtol=0)
    assert raw.std(dim=(0, 2, 3)).sub(torch.tensor(STD)).abs().max() < 0.01


def test_train_augmentation_changes_images_but_keeps_shape(datamodule):
    torch.manual_seed(0)
    a, _ = datamodule.data_train[0]
    b, _ = datamodule.data_train[0]
    assert a.shape == (3, 32, 32)
    assert not torch.equal(a, b)  # random flip / crop


def test_missing_files_name_the_folder_and_how_to_fix(tmp_path):
    dm = CIFAR10DataModule(str(tmp_path), download=False)
    with pytest.raises(DatasetError, match=r"missing in .*cifar-10-batches-py.*data_batch_1.*cifar-10-python\.tar\.gz"):
        dm.prepare_data()


def test_offline_download_fails_clearly_and_leaves_nothing(tmp_path):
    dm = CIFAR10DataModule(str(tmp_path), download=True)
    with pytest.raises(DatasetError, match="download failed.*cifar-10-python.tar.gz"):
        dm.prepare_data()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file_is_an_error_naming_the_file(data_dir, tmp_path, damage):
    folder = tmp_path / FOLDER
    folder.mkdir()
    src = data_dir / FOLDER / "test_batch"
    bad = folder / "test_batch"
    if damage == "truncate":
        bad.write_bytes(src.read_bytes()[:1_000_000])
    else:
        bad.write_bytes(b"not a pickle at all" * 100)
    with pytest.raises(DatasetError, match=r"test_batch.*(unreadable|truncated)"):
        load_batch(bad)
    # the module reports it at setup, with the file name
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["batches.meta"]:
        (folder / name).symlink_to(data_dir / FOLDER / name)
    dm = CIFAR10DataModule(str(tmp_path), download=False)
    with pytest.raises(DatasetError, match="test_batch"):
        dm.setup("test")
    shutil.rmtree(folder)


def test_md5_is_computed_once_per_file_version(tmp_path, monkeypatch):
    """The md5 check of the 180 MB runs once per machine and file: later jobs read the cached sum,
    and a changed file (size or mtime) is hashed again."""
    import hashlib

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"x" * 1000)
    assert cifar10.cached_md5(path) == hashlib.md5(b"x" * 1000).hexdigest()
    monkeypatch.setattr(cifar10, "_md5", lambda p: pytest.fail("hashed again"))
    assert cifar10.cached_md5(path) == hashlib.md5(b"x" * 1000).hexdigest()
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path.write_bytes(b"y" * 1001)
    assert cifar10.cached_md5(path) == hashlib.md5(b"y" * 1001).hexdigest()
    assert not [p for p in (tmp_path / "cache").rglob(".*")]  # no temporary files left


@pytest.mark.parametrize(
    "augment,erasing", [(None, 0.0), ("randaugment", 0.5), ("trivialaugment", 0.0), ("autoaugment", 0.25)]
)
def test_a_keyed_item_is_its_seeds_augmentation_and_leaves_the_global_rng(augment, erasing):
    """An item keyed (index, seed) is the image torchvision's own v2.Compose of the same transforms
    draws after torch.manual_seed(seed), computed here the plain way; the caller's random stream is
    untouched; the validation transform likewise."""
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    transform = train_transform(augment, erasing)
    reference = v2.Compose(transform.transforms)
    dataset = ImageTensorDataset(images, torch.arange(64), transform)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for index in range(64):
        seed = [7, 2**31 + 5, 0][index % 3] + index
        got, label = dataset[(index, seed)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            want = reference(images[index])
        assert torch.equal(got, want) and label == index
    assert torch.equal(torch.get_rng_state(), before)
    evaluation = eval_transform()
    assert torch.equal(evaluation(images[0]), v2.Compose(evaluation.transforms)(images[0]))
