"""CIFAR-10 as uint8 tensors: pickles are read once, no PIL per image.

Train split: 50,000 train images split 45,000 / 5,000 by a generator seeded with the run seed.
Test split: the 10,000 test images. Train augmentation as in the study (random horizontal flip,
RandomResizedCrop(32, scale=(0.8, 1.0), ratio=(0.9, 1.1))), applied per image on tensors in the
loader's workers; or, with ``device_augment=True``, the images stay on the accelerator as uint8 and
the loaders yield only keys (same seeded, resumable order): ``on_after_batch_transfer`` gathers
each batch there, augments it as a whole (``datamodules.augment``: same distribution, drawn from a
generator seeded by the batch's augmentation seed) and normalises it.

Options beyond the study (all off by default): ``augment`` (a per-image policy after the flip and
crop: RandAugment, TrivialAugmentWide or AutoAugment's CIFAR-10 policy), ``random_erasing`` (its
probability, per image, after normalisation), ``mixup`` / ``cutmix`` (Beta alphas; whole batches,
soft targets). Per-image options draw from the image's own seed, batch mixing from the batch's
first seed, so runs stay identical whatever ``num_workers``. With ``device_augment``, random
erasing (``augment.erase_batch``, same distribution), MixUp and CutMix run on the device; the
per-image policies are refused (they run image by image in the CPU loader).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2._transform import _RandomApplyTransform

from datamodules import check_data_dir
from datamodules.augment import POLICIES, MixCollate, augment_batch, erase_batch, mix_batch, policy_transform
from datamodules.sampling import make_loader
from lmvit.distributed import warn_uneven_shards
from lmvit.errors import ConfigError, DatasetError
from lmvit.io import atomic_write_text
from lmvit.settings import (
    FLAG,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    PROBABILITY,
    Checked,
    invalid,
    is_number,
    one_of,
)

log = logging.getLogger(__name__)

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
# md5 sums of the official release (as in torchvision.datasets.CIFAR10)
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
MEAN = (0.49139968, 0.48215841, 0.44653091)
STD = (0.24703223, 0.24348513, 0.26158784)
IMAGE_SIZE = 32
CROP_SCALE = (0.8, 1.0)  # RandomResizedCrop of the study
CROP_RATIO = (0.9, 1.1)
IMAGES_PER_FILE = 10_000
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")  # label order
NUM_CLASSES = len(CLASSES)
_MD5_CHECKED: set[Path] = set()  # folders already compared with the official release

GET_IT = (
    "Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it into {root} "
    "(it creates {folder}/), or point data.data_dir (or the DATA_DIR environment variable) at "
    "the directory that holds {folder}/."
)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5_cache_dir() -> Path:
    """Where the md5 sums of CIFAR-10 files already checked are kept (``$XDG_CACHE_HOME`` honoured)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lmvit" / "cifar10-md5"


def cached_md5(path: Path) -> str:
    """``_md5(path)``, remembered per machine for the file as it is (absolute path, size, mtime): a
    run checks the 180 MB once, not once per job. One small file per key, written atomically, so
    parallel jobs never clobber each other; an unwritable cache only means checking every time."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    stamp = md5_cache_dir() / key
    try:
        cached = stamp.read_text().strip()
        if len(cached) == 32:
            return cached
    except OSError:
        pass
    digest = _md5(path)
    try:
        atomic_write_text(stamp, digest)
    except OSError:
        pass
    return digest


def load_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickle -> (uint8 images N x 3 x 32 x 32, int64 labels N); DatasetError if unreadable."""
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32)
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated pickle, wrong format, ...
        raise DatasetError(
            f"CIFAR-10 file {path} is unreadable or truncated ({type(exc).__name__}: {exc}). "
            "Delete it and get a good copy: " + GET_IT.format(root=path.parent.parent, folder=FOLDER)
        ) from exc
    if len(images) != IMAGES_PER_FILE or len(labels) != IMAGES_PER_FILE:
        raise DatasetError(
            f"CIFAR-10 file {path} holds {len(images)} images and {len(labels)} labels, "
            f"expected {IMAGES_PER_FILE} of each. Delete it and get a good copy: "
            + GET_IT.format(root=path.parent.parent, folder=FOLDER)
        )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


class PlainCompose:
    """torchvision v2 transforms applied in order to one plain image tensor, each as its ``forward``
    would: its own random draws (``torch.rand(1) >= p`` of a random-apply transform, then
    ``make_params``) and its own kernel (``transform``), without ``forward``'s flattening of arbitrary
    inputs first (a 32x32 image's transforms in 80 % of ``v2.Compose``'s time, the same numbers:
    tests/test_cifar10.py). A transform with a ``forward`` of its own (the policies) is called."""

    def __init__(self, transforms: list) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            if type(t).forward not in (v2.Transform.forward, _RandomApplyTransform.forward):
                image = t(image)
            elif not (isinstance(t, _RandomApplyTransform) and torch.rand(1) >= t.p):
                image = t.transform(image, t.make_params([image]))
        return image

    def __repr__(self) -> str:
        return f"PlainCompose({self.transforms})"


def train_transform(augment: str | None = None, random_erasing: float = 0.0) -> PlainCompose:
    """The study's flip + crop, then the optional policy ``augment`` (on uint8), normalisation and
    the optional RandomErasing with probability ``random_erasing`` (erased pixels = 0, the mean)."""
    steps = [
        v2.RandomHorizontalFlip(),
        v2.RandomResizedCrop(IMAGE_SIZE, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True),
    ]
    if augment:
        steps.append(policy_transform(augment))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    return PlainCompose(steps)


def eval_transform() -> PlainCompose:
    return PlainCompose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


class ImageTensorDataset(Dataset):
    """uint8 image tensors + labels. A key ``(index, seed)`` (from :class:`EpochShuffleSampler`)
    draws the augmentation from ``seed``, so it is reproducible whatever the worker layout;
    ``with_seed`` appends the seed to the item (for a collate that mixes the batch)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None, with_seed: bool = False) -> None:
        self.images, self.labels, self.transform, self.with_seed = images, labels, transform, with_seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.images[index]
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:  # the transforms draw from the CPU's default generator: seeded here, restored after
                generator = torch.default_generator
                state = generator.get_state()
                generator.manual_seed(seed)  # not torch.manual_seed: it also queues every accelerator's
                try:  # seeding, 75 us an image (a third of the loading); the CPU's numbers are the same
                    image = self.transform(image)
                finally:
                    generator.set_state(state)
        if self.with_seed:
            return image, self.labels[index], seed
        return image, self.labels[index]


class IndexKeys(Dataset):
    """The keys of one split's items (``device_augment``): the images stay on the device."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: int | tuple[int, int]):
        return key


def collate_keys(split: str, keys: list) -> dict:
    """Keys -> ``{"split", "index": int64 tensor, "seed": the first item's augmentation seed}``;
    the seed stays a Python int (not moved to the device, so reading it never syncs)."""
    if keys and isinstance(keys[0], tuple):
        index, seeds = zip(*keys)
        seed = int(seeds[0])
    else:
        index, seed = keys, None
    return {"split": split, "index": torch.as_tensor(index, dtype=torch.long), "seed": seed}


class CIFAR10DataModule(Checked, pl.LightningDataModule):
    BATCH = "images"  # what a batch holds: the model's BATCH must match (lmvit.config.validate)
    classes = CLASSES  # names of the labels 0..9 (confusion matrices, per-class accuracy)
    TRAIN_IMAGES = 50_000  # in CIFAR-10's training batches (train + validation split)
    SETTINGS = {
        "batch_size": POSITIVE_INT,
        "num_workers": NON_NEGATIVE_INT,
        "val_size": POSITIVE_INT,
        "train_subset": (
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            "an integer >= 1 (or null for all images)",
        ),
        "download": FLAG,
        "pin_memory": FLAG,
        "device_augment": FLAG,
        "augment": one_of(POLICIES, null=True),
        "random_erasing": PROBABILITY,
        "mixup": (NON_NEGATIVE[0], "a number >= 0 (a Beta alpha; 0 = off)"),
        "cutmix": (NON_NEGATIVE[0], "a number >= 0 (a Beta alpha; 0 = off)"),
    }
    PREFIX = "data."
    # options of the CPU (per-image) augmentation path that device_augment=True refuses
    PER_IMAGE_ONLY = ("augment",)

    @classmethod
    def check_settings(cls, values, prefix=None) -> None:
        super().check_settings(values, prefix)
        prefix = cls.PREFIX if prefix is None else prefix
        val_size = values.get("val_size")
        if is_number(val_size) and val_size >= cls.TRAIN_IMAGES:
            raise invalid(f"{prefix}val_size", val_size, f"smaller than the {cls.TRAIN_IMAGES} training images")
        if values.get("device_augment"):
            for name in cls.PER_IMAGE_ONLY:
                if values.get(name):
                    raise ConfigError(
                        f"{prefix}{name}={values[name]!r} is not supported with {prefix}device_augment=true (it "
                        f"runs image by image in the CPU loader): set {prefix}device_augment=false or drop "
                        f"{prefix}{name} (random erasing, mixup and cutmix work on the device)."
                    )
        check_data_dir(values.get("data_dir"), prefix)

    def __init__(
        self,
        data_dir: str = "./data",
        batch_size: int = 128,
        num_workers: int = 4,
        val_size: int = 5_000,
        seed: int = 42,
        train_subset: int | None = None,
        download: bool = True,
        pin_memory: bool = True,
        device_augment: bool = False,
        augment: str | None = None,
        random_erasing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # data_dir is checked for train.py's runs only (Python callers may point at a folder still to fill)
        self.check_settings({k: v for k, v in self.hparams.items() if k != "data_dir"})
        self.root = Path(data_dir).expanduser().resolve()
        self.folder = self.root / FOLDER
        self.data_train = self.data_val = self.data_test = None
        self.train_indices = self.val_indices = None
        self._resident: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- files -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        missing = [f for f in TRAIN_FILES + TEST_FILES if not (self.folder / f).is_file()]
        if missing and self.hparams.download:
            self._download()
            missing = [f for f in TRAIN_FILES + TEST_FILES if not (self.folder / f).is_file()]
        if missing:
            raise DatasetError(
                f"CIFAR-10 files missing in {self.folder}: {', '.join(missing)}. "
                + GET_IT.format(root=self.root, folder=FOLDER)
            )
        self._check_md5()

    def _download(self) -> None:
        from torchvision.datasets import CIFAR10

        log.info("CIFAR-10 not found in %s; downloading it with torchvision", self.folder)
        self.root.mkdir(parents=True, exist_ok=True)
        # download and extract into a temporary folder, then rename: nothing half-written stays
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".cifar10-download-") as tmp:
            try:
                CIFAR10(tmp, train=True, download=True)
            except Exception as exc:  # offline, DNS failure, HTTP error, bad archive, ...
                raise DatasetError(
                    f"CIFAR-10 is not in {self.folder} and the download failed "
                    f"({type(exc).__name__}: {exc}). " + GET_IT.format(root=self.root, folder=FOLDER)
                ) from exc
            if self.folder.exists():  # a partial folder from an older copy
                shutil.rmtree(self.folder)
            os.replace(Path(tmp) / FOLDER, self.folder)

    def _check_md5(self) -> None:
        if self.folder in _MD5_CHECKED:
            return
        _MD5_CHECKED.add(self.folder)
        differing = [f for f, md5 in OFFICIAL_MD5.items() if cached_md5(self.folder / f) != md5]
        if differing:
            log.warning(
                "CIFAR-10 files in %s differ from the official release (md5 of %s); using them "
                "as they are (e.g. a re-encoded copy). Numbers may differ slightly from "
                "published ones.",
                self.folder,
                ", ".join(differing),
            )

    # -- tensors -----------------------------------------------------------------------------
    def _load(self, files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [load_batch(self.folder / f) for f in files]
        return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    def split_indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded train/val split of ``n`` images: depends on the seed alone."""
        val_size = self.hparams.val_size
        if not 0 < val_size < n:
            raise ValueError(f"data.val_size={val_size} must be in [1, {n - 1}] (train set has {n} images)")
        generator = torch.Generator().manual_seed(self.hparams.seed)
        perm = torch.randperm(n, generator=generator)
        return perm[val_size:], perm[:val_size]

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is None and stage in (None, "fit", "validate"):
            log.info("Loading CIFAR-10 train images from %s", self.folder)
            images, labels = self._load(TRAIN_FILES)
            self.train_indices, self.val_indices = self.split_indices(len(labels))
            train_idx = self.train_indices
            if self.hparams.train_subset:
                train_idx = train_idx[: self.hparams.train_subset]
            self.data_train = ImageTensorDataset(
                images[train_idx],
                labels[train_idx],
                train_transform(self.hparams.augment, self.hparams.random_erasing),
                with_seed=self.mixes,
            )
            self.data_val = ImageTensorDataset(images[self.val_indices], labels[self.val_indices], eval_transform())
            log.info("CIFAR-10 split: %d train / %d val images", len(self.data_train), len(self.data_val))
        if self.data_test is None and stage in (None, "test", "predict"):
            images, labels = self._load(TEST_FILES)
            self.data_test = ImageTensorDataset(images, labels, eval_transform())
        self._check_shards()

    def _check_shards(self) -> None:
        """Under DDP, val/test metrics equal a single process's only if each set splits evenly."""
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        if self.data_val is not None:
            warn_uneven_shards("validation", len(self.data_val), world, f"Set data.val_size to a multiple of {world}.")
        if self.data_test is not None:
            warn_uneven_shards(
                "test",
                len(self.data_test),
                world,
                "Use a number of processes that divides 10000 for exact test numbers.",
            )

    def _dataset(self, split: str) -> ImageTensorDataset:
        return {"train": self.data_train, "val": self.data_val, "test": self.data_test}[split]

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (MixUp and/or CutMix; soft targets)."""
        return self.hparams.mixup > 0 or self.hparams.cutmix > 0

    def _loader(self, split: str) -> DataLoader:
        dataset, extra = self._dataset(split), {}
        if self.hparams.device_augment:  # keys only; images gathered and augmented on the device
            dataset, extra = IndexKeys(len(dataset)), {"collate_fn": partial(collate_keys, split)}
        elif split == "train" and self.mixes:
            extra = {"collate_fn": MixCollate(NUM_CLASSES, self.hparams.mixup, self.hparams.cutmix)}
        return make_loader(
            dataset,
            train=split == "train",
            batch_size=self.hparams.batch_size,
            num_workers=0 if self.hparams.device_augment else self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory and not self.hparams.device_augment,
            seed=self.hparams.seed,
            trainer_getter=lambda: getattr(self, "trainer", None),
            **extra,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    # -- device_augment: resident uint8 images, whole-batch augmentation on the device ---------
    def resident(self, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's uint8 images and labels on ``device``, copied there once."""
        key = (split, device)
        if key not in self._resident:
            dataset = self._dataset(split)
            self._resident[key] = (dataset.images.to(device), dataset.labels.to(device))
        return self._resident[key]

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("mean_std", device)
        if key not in self._resident:
            self._resident[key] = tuple(torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (MEAN, STD))
        return self._resident[key]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if not (isinstance(batch, dict) and "index" in batch):
            return batch
        index = batch["index"]
        images, labels = self.resident(batch["split"], index.device)
        x, y = images[index], labels[index]
        if batch["split"] == "train":
            generator = None
            if batch["seed"] is not None:  # the batch's augmentation follows the data order's seed
                generator = torch.Generator(device=x.device)
                generator.manual_seed(batch["seed"])
            x = augment_batch(x, IMAGE_SIZE, CROP_SCALE, CROP_RATIO, generator=generator)
        else:
            x = x.float().div_(255.0)
        mean, std = self._mean_std(x.device)
        x = x.sub_(mean).div_(std)
        if batch["split"] == "train" and self.hparams.random_erasing > 0:
            x = erase_batch(x, self.hparams.random_erasing, generator=generator)
        if batch["split"] == "train" and self.mixes:
            x, y = mix_batch(x, y, NUM_CLASSES, self.hparams.mixup, self.hparams.cutmix, batch["seed"])
        return x, y
