"""A run told to stop (SIGTERM from a scheduler, ``timeout`` or a container; Ctrl-C) saves a
resumable checkpoint where it stands and says how to continue.

Lightning turns SIGTERM into ``received_sigterm`` and raises ``SIGTERMException`` at the next batch
boundary. This callback makes the first Ctrl-C (SIGINT) do the same (a second one aborts at once),
and on either stop writes ``checkpoints/last.ckpt`` (the exact-resume state of ``ResumeState``
included), so ``python train.py resume=<run dir>`` -- or, in a sweep, rerunning the same command with
the same ``hydra.sweep.dir`` -- continues from that step. ``RunSummary`` marks the run
``interrupted``; ``train.py`` exits with 128 + the signal's number. Loader workers ignore both
signals (``datamodules.sampling``): the training process stops them.

A stop during an epoch's validation keeps that validation: Lightning stops at a validation batch
boundary, and a checkpoint taken there would resume past it (its loop state reads "training done,
validation done"), so the epoch's validation numbers would be missing from the run's history. The
checkpoint written here rewinds the validation loop's counters to "validation of this epoch began,
no batch finished", which Lightning resumes by running that validation again, whole.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


def is_stop(exception: BaseException) -> bool:
    """A stop asked for from outside (SIGTERM, Ctrl-C), as opposed to a failure."""
    return isinstance(exception, (SIGTERMException, KeyboardInterrupt))


class StopCheckpoint(pl.Callback):
    """Saves ``<dirpath>/last.ckpt`` when the run is stopped by SIGTERM or Ctrl-C."""

    def __init__(self, dirpath: str, resume_hint: str | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.resume_hint = resume_hint  # the command that continues the run (set by train.py)
        self.signal: int | None = None  # the signal that stopped the run
        self._previous_sigint = None
        self._rewind_validation = False  # set while the stop checkpoint of a run inside validation is written

    def on_fit_start(self, trainer, pl_module) -> None:
        def on_sigint(signum, frame):
            if self.signal is not None:  # the second Ctrl-C: stop at once
                raise KeyboardInterrupt
            self.signal = signal.SIGINT
            log.warning("Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to abort)")
            trainer._signal_connector.received_sigterm = True

        try:
            self._previous_sigint = signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread (e.g. a launcher's worker thread): Ctrl-C as Lightning does
            self._previous_sigint = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not is_stop(exception):
            return
        if self.signal is None:
            self.signal = signal.SIGINT if isinstance(exception, KeyboardInterrupt) else signal.SIGTERM
        path = self.dirpath / "last.ckpt"
        self._rewind_validation = bool(trainer.state.fn == "fit" and trainer.validating and not trainer.sanity_checking)
        try:
            trainer.save_checkpoint(path)
        finally:
            self._rewind_validation = False
        if trainer.is_global_zero:
            hint = f"; continue with: {self.resume_hint}" if self.resume_hint else ""
            log.warning(
                "Stopped by %s at epoch %d, step %d; checkpoint saved to %s%s",
                signal.Signals(self.signal).name,
                trainer.current_epoch,
                trainer.global_step,
                path,
                hint,
            )

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._rewind_validation:
            rewind_validation(checkpoint)

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal or signal.SIGTERM)


def rewind_validation(checkpoint: dict) -> None:
    """Makes a checkpoint taken inside an epoch's validation resume by running that validation again.

    Lightning resumes an evaluation it finds "started but not processed" (its own mark of a step that
    died): the counters say one batch began and none finished in this validation, so the rerun starts
    at batch 0 with fresh metric states, and the totals stay those of the validations before it.
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    before = progress["total"]["completed"] - progress["current"]["completed"]  # earlier validations
    progress["total"] = {"ready": before + 1, "started": before + 1, "processed": before, "completed": before}
    progress["current"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
    progress["is_last_batch"] = False
