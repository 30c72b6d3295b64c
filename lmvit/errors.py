"""The errors a user can fix, defined once. ``train.py`` (and every entry point) prints any
:class:`UserError` as one line (``HYDRA_FULL_ERROR=1`` shows the traceback) and exits with
:attr:`UserError.exit_code`."""

from __future__ import annotations


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
