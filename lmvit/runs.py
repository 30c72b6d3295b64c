"""Run directories: the one reader of what ``train.py`` writes, for ``eval.py``, ``generate.py``,
resume and sweeps (``lmvit.resume``, ``lmvit.hydra_callbacks``), ``analysis/`` and the notebook.
Torch-free.

A run directory holds ``config.yaml`` (the resolved config ``train.py`` saved), ``.hydra/``
(Hydra's ``config.yaml``, ``hydra.yaml`` with the overrides and config-group choices),
``metrics.json`` and ``checkpoints/`` (``last.ckpt``, ``best-epochNNN.ckpt``). Sweeps nest runs at
any depth; :data:`NOT_RUNS` are folders below a log folder that hold no runs of their own.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmvit.errors import ConfigError, UserError

# a run's metrics.json status, as the rerun sweep (lmvit.resume) and the reports read it
FINISHED = ("completed",)  # has its result
FAILED = ("failed", "diverged")  # has its result: the run's settings failed (a result of them)
# stopped by the machine (a full disk, an I/O error, no memory: lmvit.errors.machine_failure), not
# by its settings: no result; a rerun continues it
CRASHED = "crashed"

RUN_MARKERS = ("metrics.json", ".hydra/config.yaml", "config.yaml")
# folders below a log folder that hold no runs of their own: reports, the Hydra files of a resumed
# run's later sessions (<run>/resumes/<date_time>/), and debug presets' runs (reported only when
# asked for by name)
NOT_RUNS = ("report", "resumes", "debug")


# Config keys that are not part of a run's configuration (what it learns): its seed (and what copies
# it), where it reads and writes, how fast data loads, how often it logs or validates, what it only
# displays, and callbacks that do not change training (early stopping does: KEEP_CALLBACKS).
# Everything else, lr, epochs and batch limits included, tells configurations apart. analysis/
# groups seeds by it; TensorBoard's HParams tab shows the rest (lmvit.config.run_hparams).
NOT_CONFIGURATION = (
    "seed",
    "data.seed",
    "data.data_dir",
    "data.folder",
    "data.cache_dir",
    "data.tokenizer_dir",
    "data.num_workers",
    "data.pin_memory",
    "data.download",
    "data.download_timeout",
    "trainer.default_root_dir",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.enable_checkpointing",
    "trainer.num_sanity_val_steps",
    "logger",
    "paths",
    "test",
    "ckpt_path",
    "resume",
    "label",
    "study_config",
    "model.optimizer",
    "model.scheduler",
    "callbacks",
    "hydra",
)
KEEP_CALLBACKS = ("callbacks.early_stopping",)


def under(key: str, prefixes: Iterable[str]) -> bool:
    """``key`` is one of ``prefixes`` or below one (``a.b`` is under ``a``)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def is_configuration(key: str) -> bool:
    """Whether the dotted config key is part of what a run learns (:data:`NOT_CONFIGURATION`)."""
    return not under(key, NOT_CONFIGURATION) or under(key, KEEP_CALLBACKS)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"model.num_layers": 2, ...}``; an empty mapping stays a value."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return out


def effective_lr(config: dict[str, Any]) -> float | None:
    """The learning rate the optimizer uses: ``optimizer.lr`` times the optimizer config's
    ``lr_scale`` (Lion, Schedule-Free, ...: their usual lr relative to AdamW's; 1 when absent), as
    ``lightning_modules.optim.build_optimizer`` applies it."""
    optimizer = config.get("optimizer") if isinstance(config, dict) else None
    lr = optimizer.get("lr") if isinstance(optimizer, dict) else None
    if not isinstance(lr, (int, float)) or isinstance(lr, bool):
        return None
    scale = optimizer.get("lr_scale")
    return float(lr) * (float(scale) if isinstance(scale, (int, float)) else 1.0)


def find_run_dirs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Run directories at or below ``paths`` (a run is a folder holding ``metrics.json``,
    ``.hydra/config.yaml`` or ``config.yaml``), sorted, without :data:`NOT_RUNS`."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: set[Path] = set()
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(
                f"Run or sweep directory {root} does not exist: pass a folder written by train.py "
                "(e.g. logs/multiruns/<date_time>) or a log folder holding such runs"
            )
        for marker in ("metrics.json", "config.yaml"):
            for file in root.rglob(marker):
                run = file.parent.parent if file.parent.name == ".hydra" else file.parent
                parts = run.relative_to(root).parts
                if not any(p in NOT_RUNS for p in parts) and any((run / m).is_file() for m in RUN_MARKERS):
                    found.add(run.resolve())
    return sorted(found)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's object, or None when it is missing or half-written."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_metrics(run: str | Path) -> dict[str, Any] | None:
    """The run's ``metrics.json``, or None when it has none that reads."""
    return read_json(Path(run) / "metrics.json")


def read_config(run: str | Path) -> dict[str, Any]:
    """The run's config as plain containers, unresolved: ``config.yaml`` (train.py's, resolved when
    saved) or else Hydra's ``.hydra/config.yaml``; {} when neither reads."""
    for path in (Path(run) / "config.yaml", Path(run) / ".hydra" / "config.yaml"):
        if path.is_file():
            try:
                return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]
            except Exception:  # noqa: BLE001 - a half-written file: unknown
                continue
    return {}


def read_hydra(run: str | Path) -> DictConfig | None:
    """The ``hydra`` node of the run's ``.hydra/hydra.yaml`` (overrides, choices), or None."""
    path = Path(run) / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    try:
        return OmegaConf.load(path).hydra
    except Exception:  # noqa: BLE001 - a half-written file: unknown
        return None


def read_choices(run: str | Path) -> dict[str, Any]:
    """Hydra's config-group choices of the run (``optimizer: adamw``, ``model: vit``, ...); {} if unknown."""
    hydra = read_hydra(run)
    choices = OmegaConf.select(hydra, "runtime.choices", default=None) if hydra is not None else None
    return OmegaConf.to_container(choices, resolve=False) if choices is not None else {}  # type: ignore[return-value]


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
        if (read_json(metrics) or {}).get("status") == "completed" and is_run(metrics.parent):
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
