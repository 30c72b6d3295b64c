"""A run told to stop (SIGTERM from a scheduler, ``timeout`` or a container; Ctrl-C) saves a
resumable checkpoint where it stands and says how to continue.

Lightning turns SIGTERM into ``received_sigterm`` and raises ``SIGTERMException`` at the next batch
boundary. This callback makes the first Ctrl-C (SIGINT) do the same (a second one aborts at once),
and on either stop writes ``checkpoints/last.ckpt`` (the exact-resume state of ``ResumeState``
included), so ``python train.py resume=<run dir>`` -- or, in a sweep, rerunning the same command with
the same ``hydra.sweep.dir`` -- continues from that step. ``RunSummary`` marks the run
``interrupted``; ``train.py`` exits with 128 + the signal's number. Loader workers ignore both
signals (``datamodules.sampling``): the training process stops them.

On SLURM (Lightning's ``SLURMEnvironment`` detected, ``auto_requeue`` on), the requeue signal that
SLURM sends before the time limit (``USR1``: ``conf/hydra/launcher/slurm.yaml``) is a stop too: the
run saves ``last.ckpt`` where it stands, marks itself ``interrupted``, runs ``scontrol requeue
<job>`` and exits with 128 + the signal's number. The requeued job is the same sweep job in the same
directory, which continues from that checkpoint like any rerun sweep. This handler takes the place
of Lightning's own (``hpc_ckpt_<n>.ckpt`` in the run directory, which the run would not resume from
with its times, and which Lightning would load instead of the trained weights for ``test``).

A stop during an epoch's validation keeps that validation: Lightning stops at a validation batch
boundary, and a checkpoint taken there would resume past it (its loop state reads "training done,
validation done"), so the epoch's validation numbers would be missing from the run's history. The
checkpoint written here rewinds the validation loop's counters to "validation of this epoch began,
no batch finished", which Lightning resumes by running that validation again, whole.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_modules.callbacks.resume import rewind_validation

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
        self._previous_requeue: tuple[int, object] | None = None  # (signal, handler) before SLURM's was set
        self.requeue = False  # stopped by SLURM's requeue signal: requeue the job after the checkpoint
        self._rewind_validation = False  # set while the stop checkpoint of a run inside validation is written

    def on_fit_start(self, trainer, pl_module) -> None:
        def on_sigint(signum, frame):
            if self.signal is not None:  # the second Ctrl-C: stop at once
                raise KeyboardInterrupt
            self.signal = signal.SIGINT
            log.warning("Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to abort)")
            trainer._signal_connector.received_sigterm = True

        def on_requeue(signum, frame):
            if self.signal is None:
                self.signal, self.requeue = signum, True
                log.warning("SLURM's requeue signal: stopping after this step, saving a checkpoint, requeueing")
                trainer._signal_connector.received_sigterm = True

        try:
            self._previous_sigint = signal.signal(signal.SIGINT, on_sigint)
            requeue_signal = slurm_requeue_signal(trainer)
            # set before Lightning registers its handlers (after on_fit_start): it then keeps this one
            if requeue_signal is not None:
                self._previous_requeue = (requeue_signal, signal.signal(requeue_signal, on_requeue))
        except ValueError:  # not the main thread (e.g. a launcher's worker thread): Ctrl-C as Lightning does
            self._previous_sigint = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None
        if self._previous_requeue is not None:
            signal.signal(*self._previous_requeue)
            self._previous_requeue = None

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
        if trainer.is_global_zero and self.requeue:
            job = requeue_slurm_job()
            log.warning(
                "Stopped by SLURM's requeue signal at epoch %d, step %d; checkpoint saved to %s; %s",
                trainer.current_epoch,
                trainer.global_step,
                path,
                f"requeued SLURM job {job}: it continues from there" if job else "scontrol requeue failed",
            )
        elif trainer.is_global_zero:
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


class StopLatch:
    """``with StopLatch() as latch:`` records a SIGTERM that lands where Lightning does not act on it.

    Lightning checks for SIGTERM at batch and epoch boundaries only, and drops it outside ``fit`` /
    ``test``: a SIGTERM during set-up, after the last check of training (on_fit_end, teardown),
    between training and testing or in the last test batch would otherwise let the run go on, or
    a sweep start its next job, and a stop told to the whole process group would be lost. Inside
    ``fit``/``test`` Lightning calls this handler beside its own (it keeps a handler it finds), so
    ``latch.signal`` is set on every SIGTERM while the block runs; ``train.py`` stops where it is
    safe (after set-up, after ``fit``, after ``test``). Outside the main thread it records nothing
    (signals go there only)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = None

    def __call__(self, signum, frame) -> None:
        if self.signal is None:
            log.warning("%s received: the run stops at the next safe point", signal.Signals(signum).name)
        self.signal = signum

    def __enter__(self) -> StopLatch:
        try:
            self._previous = signal.signal(signal.SIGTERM, self)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return None

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal or signal.SIGTERM)


def slurm_requeue_signal(trainer) -> int | None:
    """The signal SLURM requeues the run on, when Lightning runs it on SLURM with auto-requeue."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and os.name != "nt":
        return environment.requeue_signal
    return None


def requeue_slurm_job() -> str | None:
    """``scontrol requeue`` this SLURM job (an array task as ``<array>_<task>``); its id, or None
    when scontrol failed (said in the log)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.error("scontrol requeue %s: %s", job, error)
        return None
    if result.returncode != 0:
        log.error("scontrol requeue %s exited with %d: %s", job, result.returncode, result.stderr.strip())
        return None
    return job
