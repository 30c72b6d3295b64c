"""What Lightning's checkpoints lack for an exact resume: RNG states, in-epoch metric states, and
loop counters that make Lightning resume an epoch's validation and end where it would skip them."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torchmetrics import Metric


class ResumeState(pl.Callback):
    """Makes a resumed run continue exactly where it stopped.

    Saves in every checkpoint the RNG states (torch, CUDA, numpy, random) and, when the checkpoint
    is taken inside an epoch (its validation included), the states of the LightningModule's
    ``train_*`` torchmetrics (the accumulated loss and accuracy of the epoch so far), which
    Lightning does not save itself. A checkpoint taken at an epoch's last training batch (every N
    steps) is made to resume with that epoch's validation and end, which Lightning would skip
    (``finish_epoch_before_validation``). The training metrics are restored only where the run
    resumes inside that epoch (``resumes_inside_epoch``).
    """

    KEY = "lmvit_resume_state"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state_to_torch(np.random.get_state()),
            "random": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "train_metrics": {},
        }
        processed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if processed > 0:  # inside an epoch (its validation included: on_train_epoch_end resets them)
            for name, metric in _train_metrics(pl_module):
                state["train_metrics"][name] = {k: _clone(getattr(metric, k)) for k in metric._defaults}
        checkpoint[self.KEY] = state
        if at_epoch_end_before_validation(trainer):
            finish_epoch_before_validation(checkpoint)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(self.KEY)
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state["random"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        if not resumes_inside_epoch(checkpoint):  # taken at validation end: the next epoch starts afresh
            return
        metrics = dict(_train_metrics(pl_module))
        for name, values in state["train_metrics"].items():
            metric = metrics[name]
            for k, v in values.items():
                current = getattr(metric, k)
                setattr(metric, k, v.to(current.device) if isinstance(v, torch.Tensor) else v)
            metric._update_count = max(metric._update_count, 1)
            metric._computed = None


def resumes_inside_epoch(checkpoint: dict[str, Any]) -> bool:
    """Whether Lightning resumes this checkpoint inside the epoch it was taken in (its training, or
    its validation begun again: ``rewind_validation``), so the epoch's training metrics go on
    accumulating. A checkpoint taken at validation end (the epoch's last training batch done, its
    validation finished) resumes with the next epoch, before which the epoch's end would have reset
    them: restoring them there would mix two epochs into the next epoch's training numbers."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    train, val = loops.get("epoch_loop.batch_progress"), loops.get("epoch_loop.val_loop.batch_progress")
    if train is None or val is None:
        return True
    counts = val["total"]  # Lightning's own test for an evaluation to resume (RESTARTED_MID_EVALUATION)
    mid_validation = (
        counts["started"] == counts["ready"]
        and counts["processed"] == counts["started"] - 1
        and counts["completed"] == counts["processed"]
    )
    return not train["is_last_batch"] or mid_validation


def rewind_validation(checkpoint: dict, started: bool = True) -> None:
    """Makes a checkpoint taken inside an epoch's validation resume by running that validation again.

    Lightning resumes an evaluation it finds "started but not processed" (its own mark of a step that
    died): the counters say one batch began and none finished in this validation, so the rerun starts
    at batch 0 with fresh metric states, and the totals stay those of the validations before it.
    ``started=False``: the checkpoint was taken before the validation began (its counters still hold
    the previous validation's).
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    before = progress["total"]["completed"]  # the validations of this epoch before this one
    if started:
        before -= progress["current"]["completed"]
    progress["total"] = {"ready": before + 1, "started": before + 1, "processed": before, "completed": before}
    progress["current"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
    progress["is_last_batch"] = False


def at_epoch_end_before_validation(trainer) -> bool:
    """Inside ``on_train_batch_end`` of an epoch's last batch, with the epoch's validation to follow
    (a checkpoint every N steps that falls on an epoch's end)."""
    if trainer.sanity_checking or not trainer.training:
        return False
    loop = trainer.fit_loop.epoch_loop
    progress = loop.batch_progress.current
    return (
        progress.processed == progress.completed + 1  # the batch ran, its on_train_batch_end is under way
        and loop._num_ready_batches_reached()
        and loop._should_check_val_fx(trainer.fit_loop._data_fetcher)
    )


def finish_epoch_before_validation(checkpoint: dict) -> None:
    """Makes a checkpoint taken at the last training batch of an epoch resume with that epoch's
    validation and its end, as a checkpoint taken in the validation does.

    Lightning resumes such a checkpoint as "epoch done": it skips the epoch's validation, never runs
    the epoch's end (its numbers missing from the history, its training metrics carried into the
    next epoch's). Here the batch is marked completed (as it is once validation runs) and the
    validation as begun with no batch finished, which Lightning resumes by running it, whole."""
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    for counts in (progress["total"], progress["current"]):
        counts["completed"] = counts["processed"]
    rewind_validation(checkpoint, started=False)


def _numpy_state_to_torch(state: tuple) -> tuple:
    """numpy's RNG state with its key array as a tensor (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached))


def _train_metrics(pl_module) -> list[tuple[str, Any]]:
    return [
        (name, m)
        for name, m in pl_module.named_modules()
        if isinstance(m, Metric) and name.split(".")[-1].startswith("train")
    ]


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value
