"""Run directories -> pandas DataFrames.

A run directory is one Hydra job: it holds ``.hydra/`` (or ``config.yaml``), ``tensorboard/``
event files and, once the run has ended (or failed), ``metrics.json``. Sweeps nest them at any
depth, so every loader takes a sweep directory, a log folder or a list of run directories.

* :func:`load_runs`: one row per run (status, configuration, final/best/test metrics, time,
  memory), including runs still running or failed (their ``status`` says so).
* :func:`load_scalars`: every scalar of the runs' TensorBoard event files, long format.
* :func:`epoch_curves`: per-epoch train/val curves (epoch and cumulative train seconds as x axes).

Runs are grouped by configuration: ``group`` identifies the resolved config without the seed and
without what only says where or how verbosely a run writes (:data:`NOT_CONFIGURATION`), so the
seeds of one configuration share a ``group`` whichever sweep they came from. Two runs of one
group with the same seed are one sample: the older is marked ``duplicate`` (not reported).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.study import OPTIMIZER_NAMES, match_study_config
from analysis.timing import measurement
from lmvit.runs import (  # noqa: F401 (NOT_RUNS, NOT_CONFIGURATION, find_run_dirs: re-exported)
    NOT_CONFIGURATION,
    NOT_RUNS,
    effective_lr,
    find_run_dirs,
    flatten,
    is_configuration,
    read_choices,
    read_config,
    read_metrics,
    under,
)

EVENT_GLOB = "events.out.tfevents.*"

# what the study's comparisons vary (findings pair configurations that differ only in these)
STUDY_AXES = ("model.num_layers", "model.norm")


def shown(run: Path) -> str:
    """A run's folder as reports write it: relative to the working directory when it lies below it
    (``docs/results/cpu/runs/...``, the same on every clone), else absolute."""
    run = Path(run)
    try:
        return str(run.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(run)


def _optimizer_key(choices: dict[str, Any], config: dict[str, Any]) -> str | None:
    """adam | adamw | sgd | momentum, from Hydra's choice or else from the optimizer target."""
    if choices.get("optimizer"):
        return str(choices["optimizer"])
    opt = config.get("optimizer") or {}
    target = str(opt.get("_target_", "")).rsplit(".", 1)[-1].lower()
    if target == "sgd":
        return "momentum" if float(opt.get("momentum") or 0) > 0 else "sgd"
    return target or None


def _get(d: dict[str, Any], dotted: str, default: Any = None) -> Any:
    for key in dotted.split("."):
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _digest(items: dict[str, Any]) -> str:
    text = json.dumps(sorted(items.items()), default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def config_keys(config: dict[str, Any], summary: dict[str, Any] | None = None) -> dict[str, str]:
    """Identities of a run's configuration (short hashes):

    * ``group``: everything but the seed (:data:`NOT_CONFIGURATION`): the runs of one group are seeds;
    * ``family``: the group without ``optimizer.lr``: the points of one learning-rate grid;
    * ``lr_setting``: without the whole optimizer: the optimizers compared at their best lr;
    * ``setting``: without the optimizer (but its lr), depth and norm placement: the study's
      comparisons pair groups of one setting (same budget, data, lr, ...).
    """
    flat = flatten(config)
    if flat:  # one name for the budget, whichever form the run's config holds (budget_name)
        flat.pop("budget.name", None)
        flat["budget"] = budget_name(config)
    if not flat:  # no config file: the overrides without the seed say what the run was
        overrides = [
            o for o in (summary or {}).get("overrides", []) if is_configuration(o.split("=", 1)[0].lstrip("+~"))
        ]
        flat = {
            "task": (summary or {}).get("task"),
            "overrides": sorted(overrides),
            "label": _get(summary or {}, "experiment.label"),
        }
    kept = {k: v for k, v in flat.items() if is_configuration(k)}
    no_optimizer = {k: v for k, v in kept.items() if not under(k, ["optimizer"])}
    return {
        "group": _digest(kept),
        "family": _digest({k: v for k, v in kept.items() if k != "optimizer.lr"}),
        "lr_setting": _digest(no_optimizer),
        "setting": _digest(
            {
                **{k: v for k, v in no_optimizer.items() if not under(k, STUDY_AXES)},
                "optimizer.lr": kept.get("optimizer.lr"),
            }
        ),
    }


def _group_name(run: Path, seed: Any) -> str:
    """The job folder's name without its ``seed=N`` (sweeps name folders by their overrides)."""
    parts = [p for p in run.name.split(",") if not p.startswith(("seed=", "+seed=", "++seed="))]
    return ",".join(parts) or run.name


def describe_run(run: Path) -> dict[str, Any]:
    """One run as a flat record (see :func:`load_runs`)."""
    run = Path(run)
    summary = read_metrics(run)
    config = read_config(run)
    choices = read_choices(run)
    experiment = (summary or {}).get("experiment") or {}
    task = (summary or {}).get("task") or config.get("task")
    optimizer = _optimizer_key(choices, config)
    num_layers = _get(config, "model.num_layers")
    norm = _get(config, "model.norm")
    max_epochs = _get(config, "trainer.max_epochs")
    study_config = experiment.get("study_config") or config.get("study_config")
    if not study_config and config:
        study_config = match_study_config(config)
    label = experiment.get("label") or config.get("label") or _default_label(task, optimizer, num_layers, norm, run)
    seed = (summary or {}).get("seed", config.get("seed"))
    record: dict[str, Any] = {
        "run": shown(run),
        "name": run.name,
        "status": (summary or {}).get("status", "no metrics.json"),
        "task": task,
        "label": label,
        "study_config": study_config,
        "experiment": experiment.get("name") or choices.get("experiment"),
        "optimizer": optimizer,
        "optimizer_name": OPTIMIZER_NAMES.get(optimizer or "", optimizer),
        "num_layers": num_layers,
        "norm": norm,
        "max_epochs": max_epochs,
        "seed": seed,
        "budget": budget_name(config),
        "lr": effective_lr(config),
        "train_subset": _get(config, "data.train_subset"),
        "limit_train_batches": _get(config, "trainer.limit_train_batches"),
        "precision": (summary or {}).get("precision") or _get(config, "trainer.precision"),
        "optimizer_kernel": (summary or {}).get("optimizer_kernel"),  # absent before it was recorded
        "monitor": _get(config, "monitor.metric"),
        "monitor_mode": _get(config, "monitor.mode"),
        **config_keys(config, summary),
        "group_name": _group_name(run, seed),
        "train_file": _get(config, "data.train_file"),
        "tokenizer": _get(config, "data.tokenizer"),
        "epochs": (summary or {}).get("epochs"),
        "train_seconds": (summary or {}).get("train_seconds"),
        "peak_memory_mb": (summary or {}).get("peak_memory_mb"),
        "peak_rss_mb": (summary or {}).get("peak_rss_mb"),
        **measurement((summary or {}).get("history") or []),
        "params": _get(summary or {}, "params.learnable"),
        "error": _get(summary or {}, "error.message"),
        "has_events": any((run / "tensorboard").glob(EVENT_GLOB))
        if (run / "tensorboard").is_dir()
        else any(run.rglob(EVENT_GLOB)),
    }
    for section in ("final", "test"):
        for key, value in ((summary or {}).get(section) or {}).items():
            record[key] = value
    for key, value in ((summary or {}).get("best") or {}).items():
        record[f"best:{key}"] = value
    return record


def budget_name(config: dict) -> str:
    """The run's budget (``budget`` of its config, conf/budget/: ``full``, ``cpu``, ...); a run from
    before budgets had a name ran the default, ``full``."""
    name = config.get("budget")
    if isinstance(name, dict):  # an early form, {name: ...}
        name = name.get("name")
    return str(name) if name else "full"


def _default_label(task, optimizer, num_layers, norm, run: Path) -> str:
    if not task:
        return run.name
    parts = [str(task).upper() if task == "lstm" else "ViT"]
    if task == "vit" and norm:
        parts.append(f"{norm}-norm")
    if num_layers is not None:
        parts.append(f"{num_layers}L")
    if optimizer:
        parts.append(OPTIMIZER_NAMES.get(optimizer, optimizer))
    return " ".join(parts)


def load_runs(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One row per run found at or below ``paths``: ``run`` (its directory), ``status``
    (``completed``, ``failed``, ``running``, ..., or ``no metrics.json`` for a run still
    starting or killed), ``task``, ``label``, ``study_config``, ``optimizer``, ``num_layers``,
    ``norm``, ``epochs``, final metrics (``train/loss``, ``val/acc``, ...), ``test/...``,
    ``best:<metric>``, ``train_seconds``, ``peak_memory_mb`` (GPU) and ``peak_rss_mb``."""
    records = [describe_run(run) for run in find_run_dirs(paths)]
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=["run", "name", "status", "task", "label", "study_config", "group", "seed"])
    _mark_duplicate_seeds(frame)
    # labels name lines in figures and rows in tables: one per group (its first run's), and
    # unique across groups
    frame["label"] = frame.groupby("group")["label"].transform("first")
    firsts = frame.drop_duplicates("group")
    dup_groups = set(firsts.loc[firsts["label"].duplicated(keep=False), "group"])
    if dup_groups:
        dup = frame["group"].isin(dup_groups)
        frame.loc[dup, "label"] = frame.loc[dup, "label"] + " [" + frame.loc[dup, "group_name"] + "]"
    return frame.reset_index(drop=True)


def _mark_duplicate_seeds(frame: pd.DataFrame) -> None:
    """Completed runs of one group with the same seed are one sample: keep the newest."""
    done = frame[(frame["status"] == "completed") & frame["seed"].notna()]
    for _, same in done.groupby(["group", "seed"]):
        if len(same) < 2:
            continue
        mtimes = {i: Path(frame.at[i, "run"], "metrics.json").stat().st_mtime for i in same.index}
        keep = max(mtimes, key=lambda i: (mtimes[i], frame.at[i, "run"]))
        for i in same.index.drop(keep):
            frame.at[i, "status"] = "duplicate"
            frame.at[i, "error"] = f"same configuration and seed as {frame.at[keep, 'run']} (kept, newer)"


def completed(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "completed"]


# -- TensorBoard scalars -------------------------------------------------------------------
def load_scalars(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """Every scalar in the runs' TensorBoard event files: columns ``run``, ``tag``, ``step``,
    ``wall_time``, ``value`` (read with TensorBoard's own ``EventAccumulator``)."""
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    frames = []
    for run in map(Path, run_dirs):
        event_dirs = sorted({f.parent for f in run.rglob(EVENT_GLOB)})
        for event_dir in event_dirs:
            acc = EventAccumulator(str(event_dir), size_guidance={SCALARS: 0})
            try:
                acc.Reload()
            except Exception:  # noqa: BLE001 - a truncated file of a run still writing
                continue
            for tag in acc.Tags().get(SCALARS, []):
                events = acc.Scalars(tag)
                frames.append(
                    pd.DataFrame(
                        {
                            "run": shown(run),
                            "tag": tag,
                            "step": [e.step for e in events],
                            "wall_time": [e.wall_time for e in events],
                            "value": [e.value for e in events],
                        }
                    )
                )
    if not frames:
        return pd.DataFrame(columns=["run", "tag", "step", "wall_time", "value"])
    return pd.concat(frames, ignore_index=True)


def epoch_curves(scalars: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch curves from :func:`load_scalars` output: one row per (run, epoch) with
    ``epoch`` (1-based, as in the study's figures), ``time/train_s`` (cumulative wall-clock
    seconds of training) and every epoch-level metric (``train/loss``, ``val/acc``, ...)."""
    if scalars.empty:
        return pd.DataFrame(columns=["run", "epoch"])
    rows = []
    for run, group in scalars.groupby("run", sort=False):
        epoch_at_step = group[group["tag"] == "epoch"].drop_duplicates("step", keep="last").set_index("step")["value"]
        # epoch-level metrics: train/*, val/* (not the per-step ones), time/*, memory/*
        keep = group["tag"].str.match(r"^(train|val|time|memory)/") & ~group["tag"].str.endswith("_step")
        wide = (
            group[keep].drop_duplicates(["tag", "step"], keep="last").pivot(index="step", columns="tag", values="value")
        )
        if wide.empty:
            continue
        wide["epoch"] = epoch_at_step.reindex(wide.index).to_numpy()
        wide = wide.dropna(subset=["epoch"])
        # several logging steps can share an epoch (train and val end): merge them
        wide = wide.groupby("epoch").last().reset_index()
        wide["epoch"] = wide["epoch"].astype(int) + 1
        wide.insert(0, "run", run)
        rows.append(wide)
    if not rows:
        return pd.DataFrame(columns=["run", "epoch"])
    return pd.concat(rows, ignore_index=True).sort_values(["run", "epoch"]).reset_index(drop=True)
