"""Resumable, seeded data order for training loaders.

* :class:`EpochShuffleSampler`: the order of epoch ``e`` is a function of (seed, e) alone, and each
  position carries its own augmentation seed, so augmentation does not depend on the number of
  workers or on which worker draws which batch.
* :class:`ResumableLoader`: a ``DataLoader`` that Lightning saves in checkpoints (it has
  ``state_dict``/``load_state_dict``), so a run resumed from a mid-epoch checkpoint continues with
  the very next batch instead of restarting the epoch.
"""

from __future__ import annotations

import atexit
import signal
import sys
import weakref
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler


class EpochShuffleSampler(DistributedSampler):
    """Yields ``(index, augmentation_seed)`` pairs (plain indices with ``with_seeds=False``) in an
    order fixed by ``(seed, epoch)``.

    The epoch is read from ``epoch_fn`` (e.g. the trainer's current epoch) when iteration starts,
    falling back to :meth:`set_epoch`.

    Under DDP (``num_replicas`` processes) process ``rank`` takes every ``num_replicas``-th position
    of the epoch's order starting at ``rank``; the tail that does not split evenly is dropped (as
    ``DistributedSampler(drop_last=True)``). Being a ``DistributedSampler``, Lightning keeps it
    rather than wrapping it in one of its own.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        epoch_fn: Callable[[], int] | None = None,
        with_seeds: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.size, self.seed, self.epoch_fn, self.with_seeds = size, seed, epoch_fn, with_seeds
        # DistributedSampler.__init__ wants a dataset and a process group: its fields are set here
        self.num_replicas, self.rank, self.shuffle, self.drop_last = num_replicas, rank, True, True
        self.num_samples = size // num_replicas
        self.total_size = self.num_samples * num_replicas
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

    def __iter__(self) -> Iterator[tuple[int, int] | int]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        start = 0
        if self._resume is not None and self._resume[0] == epoch:
            start = self._resume[1]
        self._resume = None
        self.iter_epoch = epoch
        permutation, aug_seeds = self.order(epoch)
        shard = slice(self.rank, self.total_size, self.num_replicas)
        permutation, aug_seeds = permutation[shard], aug_seeds[shard]
        if self.with_seeds:
            yield from zip(permutation[start:].tolist(), aug_seeds[start:].tolist())
        else:
            yield from permutation[start:].tolist()

    def __len__(self) -> int:
        return self.num_samples


class ResumableLoader(DataLoader):
    """Training DataLoader over an :class:`EpochShuffleSampler` whose in-epoch position is
    checkpointed by Lightning (batches yielded so far in the current epoch).

    Lightning may rebuild it with another sampler (``trainer.overfit_batches`` swaps in a
    ``SequentialSampler``); it then behaves as a plain DataLoader, with nothing to resume."""

    def __init__(self, dataset, sampler=None, generator: torch.Generator | None = None, **kwargs) -> None:
        if generator is None:  # a private generator: creating iterators never consumes the global torch RNG
            generator = torch.Generator().manual_seed(getattr(sampler, "seed", 0))
        super().__init__(dataset, sampler=sampler, generator=generator, **kwargs)
        self._yielded = 0

    @property
    def _resumable(self) -> EpochShuffleSampler | None:
        return self.sampler if isinstance(self.sampler, EpochShuffleSampler) else None

    def __iter__(self):
        sampler = self._resumable
        if sampler is None:
            yield from super().__iter__()
            return
        resume = sampler._resume
        epoch = sampler.epoch_fn() if sampler.epoch_fn else sampler.epoch
        self._yielded = resume[1] // self.batch_size if resume and resume[0] == epoch else 0
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        sampler = self._resumable
        return {} if sampler is None else {"epoch": sampler.iter_epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if self._resumable is not None and state:
            self._resumable.resume_from(state["epoch"], state["batches"] * self.batch_size)


WORKER_START = "fork" if sys.platform.startswith("linux") else "spawn"  # how loader workers start


def ignore_stop_signals(worker_id: int) -> None:
    """A loader worker ignores SIGINT, SIGTERM and SLURM's requeue signal (USR1): the training
    process decides when it stops (and :func:`stop_workers_at_exit` stops it when Python exits)."""
    for stop in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)):  # no USR1 on Windows
        if stop is not None:
            signal.signal(stop, signal.SIG_IGN)


_WITH_WORKERS: weakref.WeakSet[DataLoader] = weakref.WeakSet()  # loaders whose workers ignore SIGTERM


@atexit.register  # registered after torch's and multiprocessing's own handlers, so it runs before them
def stop_workers_at_exit() -> None:
    """Stop the persistent workers of every loader still alive the way torch stops them (each is
    sent its end-of-work message and joined). Without it, multiprocessing's exit handler would
    SIGTERM these workers, which ignore it, and wait for them forever: a script or notebook that
    still holds a loader it iterated would never exit."""
    for loader in list(_WITH_WORKERS):
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


def make_loader(
    dataset,
    *,
    train: bool,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    seed: int,
    trainer_getter: Callable[[], object] | None = None,
    with_seeds: bool = True,
    **loader_kwargs,
) -> DataLoader:
    """Evaluation: a plain sequential DataLoader. Training: a :class:`ResumableLoader` whose
    epoch order follows ``trainer.current_epoch`` (``trainer_getter()``; epoch 0 without one)."""
    kwargs = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        # SIGTERM/Ctrl-C reach the whole process group: the training process saves a checkpoint
        # and stops the workers itself (lightning_modules/callbacks/stop.py)
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
        # explicit: inside a joblib (loky) job the default context is loky's, which cannot start
        # torch's workers ("'Process' object has no attribute 'env'")
        multiprocessing_context=WORKER_START if num_workers > 0 else None,
        pin_memory=pin_memory and torch.cuda.is_available(),
        **loader_kwargs,  # e.g. collate_fn
    )
    if not train:  # a private generator: creating iterators never consumes the global torch RNG
        return _tracked(DataLoader(dataset, shuffle=False, generator=torch.Generator().manual_seed(seed), **kwargs))

    def current_epoch() -> int:
        trainer = trainer_getter() if trainer_getter is not None else None
        return trainer.current_epoch if trainer is not None else 0

    trainer = trainer_getter() if trainer_getter is not None else None  # under DDP: this process's shard
    sampler = EpochShuffleSampler(
        len(dataset),
        seed,
        epoch_fn=current_epoch,
        with_seeds=with_seeds,
        num_replicas=getattr(trainer, "world_size", 1),
        rank=getattr(trainer, "global_rank", 0),
    )
    return _tracked(ResumableLoader(dataset, sampler=sampler, drop_last=True, **kwargs))


def _tracked(loader: DataLoader) -> DataLoader:
    if loader.num_workers > 0:
        _WITH_WORKERS.add(loader)
    return loader
