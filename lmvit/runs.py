"""A finished run directory as ``eval.py``, ``generate.py`` and the notebook see it: its saved config,
its checkpoints, its model, and (for a sweep folder) the completed runs below it.

A run directory holds ``config.yaml`` (the resolved config ``train.py`` saved), ``metrics.json`` and
``checkpoints/`` (``last.ckpt``, ``best-epochNNN.ckpt``).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmvit.errors import ConfigError, UserError


def is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()


def run_dir(path: str | Path, setting: str = "run") -> Path:
    """``path`` as an existing run directory, else a :class:`ConfigError` naming ``setting``."""
    run = Path(str(path)).expanduser().resolve()
    if not run.exists():
        raise ConfigError(f"Invalid setting {setting}={str(path)!r}: {run} does not exist.")
    if not (run / "config.yaml").is_file():
        raise ConfigError(
            f"Invalid setting {setting}={str(path)!r}: {run / 'config.yaml'} not found. Pass the directory "
            "of a run made by train.py (it holds config.yaml, metrics.json and checkpoints/)."
        )
    return run


def completed_runs(folder: str | Path) -> list[Path]:
    """Run directories at or below ``folder`` whose ``metrics.json`` says ``completed``, sorted."""
    runs = []
    for metrics in sorted(Path(folder).rglob("metrics.json")):
        try:
            status = json.loads(metrics.read_text()).get("status")
        except (OSError, ValueError):
            continue
        if status == "completed" and is_run(metrics.parent):
            runs.append(metrics.parent)
    return runs


def load_metrics(run: Path) -> dict[str, Any]:
    path = run / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def checkpoint(run: Path, which: str = "best") -> Path:
    """The checkpoint ``which`` (``best``, ``last`` or a path) of ``run``; ConfigError if absent.

    ``best`` is the monitored metric's best epoch (``metrics.json``'s ``best.epoch``) when its file
    is there, else the newest ``best-*.ckpt`` (``save_top_k=1`` keeps one)."""
    folder = run / "checkpoints"
    if which == "last":
        path = folder / "last.ckpt"
    elif which == "best":
        epoch = load_metrics(run).get("best", {}).get("epoch")
        path = folder / f"best-epoch{epoch:03d}.ckpt" if isinstance(epoch, int) else None
        if path is None or not path.is_file():
            found = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
            path = found[-1] if found else folder / "best-*.ckpt"
    else:
        path = Path(which).expanduser()
        path = path if path.is_absolute() or path.is_file() else folder / path
    if not path.is_file():
        present = ", ".join(sorted(p.name for p in folder.glob("*.ckpt"))) if folder.is_dir() else "none"
        raise ConfigError(
            f"Invalid setting ckpt={which!r}: no checkpoint {path} in run {run} (checkpoints there: "
            f"{present or 'none'}). Use ckpt=best, ckpt=last or ckpt=<path to a .ckpt file>."
        )
    return path.resolve()


def checkpoint_damage(path: Path) -> str | None:
    """What is wrong with the checkpoint file ``path`` (empty, truncated, corrupt), or None if it reads
    whole. A torch checkpoint is a zip archive: a file cut short has no central directory, a damaged
    one fails its entries' CRC; reading it costs one pass over the file, no unpickling."""
    try:
        if path.stat().st_size == 0:
            return "it is empty"
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        return f"its entry {bad} is corrupt" if bad else None
    except zipfile.BadZipFile:
        return "it is truncated or not a checkpoint (no zip central directory)"
    except (OSError, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        return f"it cannot be read ({exc})"


def check_checkpoint(path: Path, use: Callable[[Path], str]) -> None:
    """A :class:`ConfigError` when ``path`` is damaged, offering the run's newest other intact
    checkpoint (``<run>/checkpoints/*.ckpt``) as the command ``use(checkpoint)``."""
    damage = checkpoint_damage(path)
    if damage is None:
        return
    others = sorted(
        (p for p in path.parent.glob("*.ckpt") if p != path and checkpoint_damage(p) is None),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    offer = (
        f"an earlier checkpoint of the run: {use(others[0])}"
        if others
        else "start the run again (no other checkpoint of the run reads whole)"
    )
    raise ConfigError(f"Checkpoint {path} is damaged: {damage}. Nothing was changed; use {offer}.")


def checkpoint_name(which: str) -> str:
    """``best`` / ``last``, or a path's file stem: how output files name the checkpoint."""
    return which if which in ("best", "last") else Path(which).stem


def run_config(run: Path, data: dict[str, Any] | None = None, trainer: dict[str, Any] | None = None) -> DictConfig:
    """The run's saved config with the non-null entries of ``data`` / ``trainer`` merged in."""
    cfg = OmegaConf.load(run / "config.yaml")
    for section, values in (("data", data), ("trainer", trainer)):
        given = {k: v for k, v in (values or {}).items() if v is not None}
        if given:
            OmegaConf.set_struct(cfg, False)
            cfg[section] = OmegaConf.merge(cfg.get(section) or {}, given)
    return cfg


def model_class(cfg: DictConfig):
    from hydra.utils import get_class

    target = OmegaConf.select(cfg, "model._target_", default=None)
    if target is None:
        raise UserError("The run's config.yaml has no model._target_: not a run made by train.py.")
    return get_class(target)


def load_model(cfg: DictConfig, ckpt: Path, map_location: str = "cpu"):
    """The run's LightningModule with the checkpoint's weights, in eval mode, not compiled."""
    return model_class(cfg).load_from_checkpoint(str(ckpt), map_location=map_location, compile=False).eval()


def format_table(rows: Iterable[dict[str, Any]], columns: list[str]) -> str:
    """A plain text table (numbers with 6 significant digits) for the console."""
    rows = list(rows)

    def cell(value: Any) -> str:
        return f"{value:.6g}" if isinstance(value, float) else ("" if value is None else str(value))

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(b[i]) for b in body)]) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(s.ljust(w) for s, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(b) for b in body)])
