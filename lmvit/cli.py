"""The error policy of lmvit's entry points (``train.py``, ``eval.py``, ``generate.py``).

An error the user can fix (:class:`~lmvit.errors.UserError`, or Lightning's
``MisconfigurationException`` about a ``trainer.*`` setting) prints as one line and exits with its
code (2 for a bad setting, 1 otherwise); ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
Anything else keeps its traceback. In a Hydra multirun a failing job is logged and recorded, and the
sweep goes on (``lmvit.hydra_callbacks.SweepSummary`` exits 1 at the end, naming it).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from lightning_fabric.utilities.exceptions import MisconfigurationException

from lmvit.errors import ConfigError, DatasetError, UserError

log = logging.getLogger("lmvit")
STARTED = time.time()  # this process's start (import time): files older than it are not this run's


def user_error(exc: BaseException) -> BaseException | None:
    """The user-fixable error behind ``exc`` (itself, or what it wraps: Hydra's ``instantiate``
    re-raises a constructor's error as its ``__cause__``), else None."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, (UserError, MisconfigurationException)):
            return exc
        exc, seen = exc.__cause__, seen + 1
    return None


def exit_code(exc: BaseException) -> int:
    return getattr(exc, "exit_code", 2 if isinstance(exc, MisconfigurationException) else 1)


class ErrorPolicy:
    """``with ErrorPolicy(multirun) as policy: ...``; ``policy.on_error`` (e.g. the run summary's
    ``fail``) is called with any exception but ``SystemExit`` before it is reported."""

    def __init__(self, multirun: bool = False) -> None:
        self.multirun = multirun
        self.on_error: Callable[[BaseException], None] | None = None
        # set by train.py: this session's Hydra output folder, removed when a single run is refused
        # (see discard_refused_run); never a resumed run's own folder
        self.output_dir: Path | None = None
        self.started = STARTED

    def __enter__(self) -> ErrorPolicy:
        return self

    def __exit__(self, exc_type, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc is None or isinstance(exc, SystemExit):
            return False
        known = user_error(exc) if os.environ.get("HYDRA_FULL_ERROR") != "1" else None
        refused = refusal(exc) is not None and not self.multirun and self.output_dir is not None
        if self.on_error is not None and not refused:  # a refused single run records nothing
            self.on_error(exc)
        if refused:
            discard_refused_run(self.output_dir, self.started)
        if isinstance(exc, KeyboardInterrupt) or not (known or self.multirun):
            return False  # re-raised with its traceback
        if known:
            log.error("%s", known)
        else:
            log.exception("Job failed: %s", exc)
        if self.multirun:  # recorded in its metrics.json; the sweep goes on and exits 1 at the end
            return True  # the entry returns None: the Optuna sweeper records a FAILED trial
        raise SystemExit(exit_code(known)) from None


def refusal(exc: BaseException) -> BaseException | None:
    """The bad setting or missing data behind ``exc`` (a run refused before it trained), else None;
    a run that diverged (``DivergenceError``) or failed in training is not a refusal."""
    known = user_error(exc)
    return known if isinstance(known, (ConfigError, DatasetError, MisconfigurationException)) else None


# what a refused run's folder may hold: Hydra's files, the log, the saved config, metrics.json and
# the empty folders loggers create; anything else (a checkpoint, ...) keeps the folder
REFUSED_RUN_FILES = (".hydra", "train.log", "config.yaml", "metrics.json", "tensorboard", "checkpoints")


def discard_refused_run(output_dir: Path, started: float) -> bool:
    """Remove ``output_dir`` when it holds only what this session wrote before refusing to run
    (:data:`REFUSED_RUN_FILES`, every file newer than ``started``); returns whether it did."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return False
    entries = list(folder.iterdir())
    if any(e.name not in REFUSED_RUN_FILES for e in entries):
        return False
    files = [f for e in entries for f in ([e] if e.is_file() else e.rglob("*"))]
    if any(f.is_file() and (f.suffix == ".ckpt" or f.stat().st_mtime < started - 1) for f in files):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    for parent in list(folder.parents)[:2]:  # <task>/runs/ (or <run>/resumes/) left empty by it
        try:
            parent.rmdir()
        except OSError:  # not empty (other runs): kept
            break
    return True


# Library notices nobody can act on, silenced by their exact text (every other warning still shows)
QUIET_WARNINGS = (
    # Lightning 2.6's pytree helper on torch >= 2.9 (FutureWarning, once per loader)
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # the model summary under bf16 autocast (the CPU default): it counts the fp32 weights anyway
    r"Precision bf16-mixed is not supported by the model summary",
)
# log lines of Lightning's rank-zero logger: adverts for a logging service / model registry, and the
# accelerators this machine does not have (the GPU line stays)
QUIET_LOG_LINES = ("💡 Tip:", "TPU available: False", "HPU available: False")
RANK_ZERO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")


class _DropLines(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_libraries() -> None:
    """Silence the library notices of :data:`QUIET_WARNINGS` and :data:`QUIET_LOG_LINES`."""
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines(QUIET_LOG_LINES))


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def allow_null_groups(argv: list[str] | None = None, conf_dir: Path = CONF_DIR) -> list[str]:
    """``group=null`` on the command line means "no <group>" (as ``~group``): Hydra itself accepts
    only ``~group`` for a group of the defaults list, but ``logger=null`` is what users type.
    Rewrites ``sys.argv`` (or ``argv``) in place and returns it."""
    argv = sys.argv if argv is None else argv
    groups = {d.name for d in conf_dir.iterdir() if d.is_dir()}
    for i, arg in enumerate(argv[1:], start=1):
        key, sep, value = arg.partition("=")
        if sep and value == "null" and key.lstrip("+") in groups:  # (scheduler=none is a real option)
            argv[i] = f"~{key.lstrip('+')}"
    return argv


def refuse_unknown_choices(argv: list[str] | None = None, conf_dir: Path = CONF_DIR) -> None:
    """``group=option`` on the command line naming no file of ``conf/<group>/`` ends the program
    with one line (Hydra's own message lists the search path over several lines). Only top-level
    groups of ``conf_dir`` (not Hydra's own) and plain values or comma-separated sweeps are
    checked; anything else (``glob(...)``, interpolations) is left to Hydra."""
    argv = sys.argv if argv is None else argv
    groups = {d.name for d in conf_dir.iterdir() if d.is_dir() and d.name != "hydra"}
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if not sep or key not in groups or any(c in value for c in "()${}[]*?'\""):
            continue
        options = sorted(str(p.relative_to(conf_dir / key).with_suffix("")) for p in (conf_dir / key).rglob("*.yaml"))
        for choice in value.split(","):
            if choice not in ("null", "") and choice not in options:
                top = [o for o in options if "/" not in o]
                print(
                    f"{key}={choice}: no such option in conf/{key}/; choose one of {', '.join(top)}",
                    file=sys.stderr,
                )
                raise SystemExit(2)
