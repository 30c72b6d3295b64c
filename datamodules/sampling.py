"""Resumable, seeded data order for training loaders.

* :class:`EpochShuffleSampler`: the order of epoch ``e`` is a function of (seed, e) alone, and each
  position carries its own augmentation seed, so augmentation does not depend on the number of
  workers or on which worker draws which batch.
* :class:`ResumableLoader`: a ``DataLoader`` that Lightning saves in checkpoints (it has
  ``state_dict``/``load_state_dict``), so a run resumed from a mid-epoch checkpoint continues with
  the very next batch instead of restarting the epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class EpochShuffleSampler(Sampler):
    """Yields ``(index, augmentation_seed)`` pairs in an order fixed by ``(seed, epoch)``.

    The epoch is read from ``epoch_fn`` (e.g. the trainer's current epoch) when iteration starts,
    falling back to :meth:`set_epoch`.
    """

    def __init__(self, size: int, seed: int, epoch_fn: Callable[[], int] | None = None) -> None:
        self.size, self.seed, self.epoch_fn = size, seed, epoch_fn
        self.epoch = 0
        self.iter_epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, samples already seen)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_from(self, epoch: int, samples: int) -> None:
        """Make the next iteration of ``epoch`` start after ``samples`` samples."""
        self._resume = (epoch, samples)

    def order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        permutation = torch.randperm(self.size, generator=generator)
        aug_seeds = torch.randint(2**62, (self.size,), generator=generator)
        return permutation, aug_seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        start = 0
        if self._resume is not None and self._resume[0] == epoch:
            start = self._resume[1]
        self._resume = None
        self.iter_epoch = epoch
        permutation, aug_seeds = self.order(epoch)
        yield from zip(permutation[start:].tolist(), aug_seeds[start:].tolist())

    def __len__(self) -> int:
        return self.size


class ResumableLoader(DataLoader):
    """Training DataLoader over an :class:`EpochShuffleSampler` whose in-epoch position is
    checkpointed by Lightning (batches yielded so far in the current epoch)."""

    sampler: EpochShuffleSampler

    def __init__(self, dataset, sampler: EpochShuffleSampler, **kwargs) -> None:
        # a private generator: creating iterators never consumes the global torch RNG
        generator = torch.Generator().manual_seed(sampler.seed)
        super().__init__(dataset, sampler=sampler, generator=generator, **kwargs)
        self._yielded = 0

    def __iter__(self):
        resume = self.sampler._resume
        epoch = self.sampler.epoch_fn() if self.sampler.epoch_fn else self.sampler.epoch
        self._yielded = resume[1] // self.batch_size if resume and resume[0] == epoch else 0
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.iter_epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_from(state["epoch"], state["batches"] * self.batch_size)
