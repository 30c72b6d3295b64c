"""Data modules: CIFAR-10 images (:mod:`.cifar10`) and WikiText-2 tokens (:mod:`.wikitext2`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmvit.errors import ConfigError


def check_data_dir(value: Any, prefix: str = "data.") -> None:
    """The data folder exists (missing datasets are downloaded into it, the folder is not made)."""
    if value is None:
        return
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"Invalid setting {prefix}data_dir={str(value)!r}: directory {path.resolve()} "
            f"does not exist. Create it (missing datasets are downloaded into it) or point "
            f"{prefix}data_dir / the DATA_DIR environment variable at your data folder."
        )
