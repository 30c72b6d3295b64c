"""The errors a user can fix, defined once. ``train.py`` (and every entry point) prints any
:class:`UserError` as one line (``HYDRA_FULL_ERROR=1`` shows the traceback) and exits with
:attr:`UserError.exit_code`. :func:`machine_failure` tells a failure of the machine (a full disk)
from one of the run's settings."""

from __future__ import annotations

import errno


class UserError(Exception):
    """A problem the user can fix; the message names the setting, file or folder and the fix."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A config value is not allowed; the message names the setting and how to fix it."""

    exit_code = 2


class DatasetError(UserError, RuntimeError):
    """A dataset file or folder is missing, unreadable or corrupt; the message says how to fix it."""


class DivergenceError(UserError, RuntimeError):
    """The training loss became NaN or infinite."""


# errno values of a machine that stopped a run, not of its settings: a full disk or quota, an I/O
# error, no memory left
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM})


def machine_failure(exception: BaseException) -> BaseException | None:
    """The error of the machine behind ``exception`` (itself, or what it wraps or was raised
    while handling), else None: an ``OSError`` with one of :data:`MACHINE_ERRNOS`, or a
    ``MemoryError`` of the host. Such a run is ``crashed`` (``lmvit.resume.CRASHED``), not ``failed``:
    a rerun continues it, and no report counts it as a result of its settings."""
    seen: set[int] = set()
    while exception is not None and id(exception) not in seen:
        seen.add(id(exception))
        if isinstance(exception, MemoryError) or (isinstance(exception, OSError) and exception.errno in MACHINE_ERRNOS):
            return exception
        exception = exception.__cause__ or exception.__context__
    return None
