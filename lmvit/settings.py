"""How a class checks its own settings (foundation: imports nothing from the packages above).

The class that owns a setting writes its rule once, in ``SETTINGS`` (argument -> (test, what is
allowed)) and, for rules that span several of its arguments, in an override of
:meth:`Checked.check_settings`. Its constructor calls ``check_settings`` on its arguments, and
``lmvit.config.validate`` calls the same classmethod on the config group before any data is loaded
or model built (it finds the class through the group's ``_target_``), so both say the same line::

    Invalid setting model.norm='mid': must be one of pre, post. Fix it on the command line ...

Messages name the config key (``<prefix><argument>``): ``model.`` for a model's and its net's
arguments, ``data.`` for a data module's, ``callbacks.<name>.`` for a callback's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from lmvit.errors import ConfigError

Rule = tuple[Callable[[Any], bool], str]


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def one_of(choices: tuple[str, ...], null: bool = False) -> Rule:
    return (lambda v: v in choices, ("null or " if null else "") + "one of " + ", ".join(choices))


POSITIVE_INT: Rule = (lambda v: is_int(v) and v >= 1, "an integer >= 1")
NON_NEGATIVE_INT: Rule = (lambda v: is_int(v) and v >= 0, "an integer >= 0")
FRACTION: Rule = (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)")  # rates, dropout, warm-up
PROBABILITY: Rule = (lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
POSITIVE: Rule = (lambda v: is_number(v) and v > 0, "a number > 0")
NON_NEGATIVE: Rule = (lambda v: is_number(v) and v >= 0, "a number >= 0")
FLAG: Rule = (lambda v: isinstance(v, bool), "true or false")


def invalid(key: str, value: Any, allowed: str) -> ConfigError:
    """The one line for a bad value: the setting, the value, what is allowed."""
    return ConfigError(
        f"Invalid setting {key}={value!r}: must be {allowed}. Fix it on the command line (e.g. {key}=...) or in conf/."
    )


def check_rules(values: Mapping[str, Any], rules: Mapping[str, Rule], prefix: str) -> None:
    """Raise :class:`ConfigError` for the first value of ``values`` that breaks its rule (a value
    absent or None is not checked)."""
    for name, (ok, allowed) in rules.items():
        value = values.get(name)
        if value is not None and not ok(value):
            raise invalid(prefix + name, value, allowed)


def check_path(key: str, value: Any, kind: str = "file") -> None:
    """``value`` (None: not used) names an existing file or folder, else one line naming ``key``."""
    if value is None:
        return
    path = Path(str(value)).expanduser()
    if not (path.is_file() if kind == "file" else path.is_dir()):
        raise ConfigError(
            f"Invalid setting {key}={str(value)!r}: no such {kind} ({path.resolve()}). "
            f"Point {key} at an existing {kind}, or set {key}=null."
        )


class Checked:
    """Mixin of a class that checks its own settings: ``SETTINGS`` and ``PREFIX`` (the config key
    its arguments sit under); override :meth:`check_settings` (calling ``super()``) for rules that
    span arguments."""

    SETTINGS: ClassVar[dict[str, Rule]] = {}
    PREFIX: ClassVar[str] = ""

    @classmethod
    def check_settings(cls, values: Mapping[str, Any], prefix: str | None = None) -> None:
        check_rules(values, cls.SETTINGS, cls.PREFIX if prefix is None else prefix)
