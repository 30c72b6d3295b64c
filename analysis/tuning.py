"""Optimizers, tuned equally: the same quasi-random search for every optimizer, the best setting
confirmed with several seeds, and each optimizer's speed-up over a tuned AdamW (docs/optimizer-tuning.md).

The search space is declared once, in ``conf/tuning/space.yaml``; the optimizers are the files of
``conf/optimizer/``. Every stage is a ``train.py -m`` sweep per optimizer, in its own
``hydra.sweep.dir`` (``<log_dir>/tuning/<workload>/<stage>/<optimizer>``), so the same command
finishes an interrupted stage:

    python -m analysis.tuning plan vit                 # print the sweeps of the search stage
    python -m analysis.tuning run vit                  # search, confirm, speedup, in this order
    python -m analysis.tuning report logs/tuning/vit --out logs/tuning/vit/report

A job's trial is one override, ``+trial={optimizer:..,stage:..,k:..,lr:..,weight_decay:..,...}``
(a sweep over several such dicts is a list of jobs, not a product), and ``optimizer.lr=${trial.lr}``
etc. put its values in place; ``trial`` stays in the run's ``config.yaml`` for the report.
``trial.lr`` is ``optimizer.lr`` as everywhere in lmvit: before the optimizer's ``lr_scale``.

Torch-free: the statistics are small functions (scipy) over the runs' ``metrics.json`` files.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from scipy.stats import qmc

from analysis.stats import LEVEL, compare_metric, holm, summarize
from analysis.timing import LOAD_SLACK, measurement
from lmvit.errors import ConfigError, UserError
from lmvit.resume import publish_records, run_status
from lmvit.runs import FAILED, FINISHED, effective_lr, find_run_dirs, read_config, read_metrics

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
SPACE_FILE = CONF_DIR / "tuning" / "space.yaml"
STAGES = ("search", "confirm", "speedup")
DEFAULT = "default"  # trial k of the usual setting (factor 1, the optimizer's own weight decay and warm-up)
DONE = FINISHED + FAILED  # a job with one of these statuses has its result
DISK_MARGIN = 1_000_000_000  # bytes a sweep needs free beyond its jobs' checkpoints (logs, records)
EDGE = 0.1  # a best trial in this outer fraction of a dimension's range is marked "near a bound"


# --------------------------------------------------------------------------------------------------
# The declared space


def load_space(path: Path = SPACE_FILE) -> dict[str, Any]:
    """The search space file as a plain dict, checked (one line naming the setting on a bad one)."""
    if not path.is_file():
        raise ConfigError(f"No search space file {path}: restore conf/tuning/space.yaml.")
    space = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    dims = space.get("dimensions") or {}
    for name, dim in dims.items():
        kind = next(iter(dim), None)
        low, high = (dim.get(kind) or [None, None]) if kind else (None, None)
        ok = kind in ("log_factor", "uniform") and isinstance(low, (int, float)) and isinstance(high, (int, float))
        if not ok or not (low < high) or (kind == "log_factor" and low <= 0):
            raise ConfigError(
                f"Invalid setting dimensions.{name} in {path}: must be log_factor: [low, high] with "
                "0 < low < high, or uniform: [low, high] with low < high."
            )
    trials = space.get("trials")
    if not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"Invalid setting trials={trials!r} in {path}: must be an integer >= 1.")
    if len(space.get("seeds") or []) < 1:
        raise ConfigError(f"Invalid setting seeds in {path}: list at least one seed (3 for an interval).")
    if not isinstance(space.get("precision"), str):
        raise ConfigError(
            f"Invalid setting precision={space.get('precision')!r} in {path}: name the trainer.precision of "
            "every tuning run (e.g. bf16-mixed or 32-true)."
        )
    return space


def optimizer_names(conf_dir: Path = CONF_DIR, reference: str = "adamw") -> list[str]:
    """Every ``conf/optimizer/*.yaml``, the reference first."""
    names = sorted(p.stem for p in (conf_dir / "optimizer").glob("*.yaml"))
    return [reference] + [n for n in names if n != reference] if reference in names else names


def unit_points(space: dict[str, Any], n: int | None = None) -> np.ndarray:
    """The first ``n`` (default ``trials``) points of the scrambled Sobol sequence of ``space``:
    row k is trial k's coordinates in [0, 1), one column per dimension; the same for every optimizer."""
    n = space["trials"] if n is None else n
    sampler = qmc.Sobol(d=len(space["dimensions"]), scramble=True, seed=space["seed"])
    with warnings.catch_warnings():  # n not a power of 2: balance is lost, the points stay the same
        warnings.simplefilter("ignore", UserWarning)
        return sampler.random(n)


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def trial_values(space: dict[str, Any], usual: dict[str, Any], u: np.ndarray) -> dict[str, float]:
    """A point ``u`` of the unit cube -> the settings of one trial around ``usual`` (the optimizer's
    usual ``lr`` (optimizer.lr, before lr_scale), ``weight_decay``, ``warmup_fraction``; a
    dimension whose usual value is None is not searched: an unscheduled optimizer's warm-up)."""
    out = {}
    for coord, (name, dim) in zip(u, space["dimensions"].items()):
        if usual.get(name) is None:
            continue
        kind, (low, high) = next(iter(dim.items()))
        if kind == "log_factor":
            value = usual[name] * math.exp(math.log(low) + coord * (math.log(high) - math.log(low)))
        else:
            value = low + coord * (high - low)
        out[name] = _sig(value)
    return out


def near_bounds(space: dict[str, Any], k: int, values: dict[str, Any]) -> list[str]:
    """The dimensions where trial ``k`` lies in the outer ``EDGE`` of the searched range, as
    "<name> low" / "<name> high": there the best setting may lie beyond the space (the Tuning
    Playbook's boundary check). Only the searched dimensions of ``values`` (the trial's settings: a
    missing or None one, or a log-factor one at 0, Adam's weight decay, was not searched) count, and
    a uniform range's bound at 0 (no warm-up) is a limit, not a boundary of the search."""
    u = unit_points(space, max(space["trials"], k + 1))[k]
    out = []
    for coord, (name, dim) in zip(u, space["dimensions"].items()):
        value = values.get(name)
        kind, (low, high) = next(iter(dim.items()))
        if value is None or value != value or (kind == "log_factor" and value == 0):
            continue
        if coord < EDGE and not (kind == "uniform" and low == 0):
            out.append(f"{name} low")
        elif coord >= 1 - EDGE and not (kind == "uniform" and high == 0):
            out.append(f"{name} high")
    return out


def usual_settings(workload: str, optimizer: str, space: dict[str, Any], extra: list[str] = ()) -> dict[str, Any]:
    """The optimizer's usual setting in ``workload``, composed as train.py composes it: optimizer.lr
    (the centre of the optimizer's learning-rate grid preset ``conf/experiment/<lr_grid>_<optimizer>.yaml``
    where the workload names one and the preset exists: SGD's and momentum's, which the study ran at
    Adam's lr; else the model's), lr_scale, weight_decay, the cosine schedule's warm-up (None when unscheduled),
    and the budget's epochs."""
    from hydra import compose, initialize_config_dir

    scheduled = optimizer not in space.get("unscheduled", [])
    overrides = merge_overrides(
        workload_config(space, workload)["base"],
        [f"optimizer={optimizer}", f"scheduler={space['scheduler'] if scheduled else 'none'}"],
        list(extra),
    )
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    opt = cfg.optimizer
    lr = float(opt.lr)
    grid = workload_config(space, workload).get("lr_grid")
    preset = CONF_DIR / "experiment" / f"{grid}_{optimizer}.yaml" if grid else None
    if preset is not None and preset.exists():  # the grid's centre: this optimizer's usual lr on the model
        lr = float(OmegaConf.load(preset).optimizer.lr)
    return {
        "lr": lr,
        "lr_scale": float(opt.get("lr_scale") or 1.0),
        "weight_decay": float(opt.get("weight_decay") or 0.0),
        "warmup_fraction": float(cfg.scheduler.warmup_fraction) if scheduled else None,
        "max_epochs": int(cfg.trainer.max_epochs),
    }


def workload_config(space: dict[str, Any], workload: str) -> dict[str, Any]:
    if workload not in space["workloads"]:
        raise ConfigError(
            f"Unknown workload {workload!r}: choose one of {', '.join(space['workloads'])} (conf/tuning/space.yaml)."
        )
    wl = space["workloads"][workload]
    return {**wl, "base": [*wl["base"], f"trainer.precision={space['precision']}"]}


# --------------------------------------------------------------------------------------------------
# Sweeps


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*lists: list[str]) -> list[str]:
    """Override lists merged by key, a later list winning (Hydra refuses a key given twice)."""
    merged: dict[str, str] = {}
    for overrides in lists:
        for o in overrides:
            merged.pop(_key(o), None)
            merged[_key(o)] = o
    return list(merged.values())


# Trial values that must reach train.py as a float even when whole: Lightning reads an int
# limit_train_batches as a number of batches (1: one batch an epoch) and a float as a fraction of them.
FRACTIONS = ("limit_train_batches",)


def _fmt(value: Any, key: str = "") -> str:
    if not isinstance(value, float):
        return str(value)
    text = f"{value:.4g}"
    return text + ".0" if key in FRACTIONS and text.lstrip("-").isdigit() else text


def trial_override(trials: list[dict[str, Any]]) -> str:
    """``+trial={..},{..}``: one job per dict (Hydra sweeps a list of dicts element by element)."""
    return "+trial=" + ",".join("{" + ",".join(f"{k}:{_fmt(v, k)}" for k, v in t.items()) + "}" for t in trials)


@dataclass
class Sweep:
    workload: str
    stage: str
    optimizer: str
    sweep_dir: Path
    trials: list[dict[str, Any]]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        return ["train.py", "-m", *self.overrides, f"hydra.sweep.dir={self.sweep_dir}"]

    def command(self) -> str:
        return "python " + " ".join(shlex.quote(a) for a in self.argv())

    def jobs(self) -> set[tuple]:
        return {(t["stage"], str(t["k"]), str(t.get("steps", 1.0)), int(s)) for t in self.trials for s in self.seeds}


def _sweep(space, workload, stage, optimizer, trials, seeds, log_dir, extra) -> Sweep:
    wl = workload_config(space, workload)
    scheduled = optimizer not in space.get("unscheduled", [])
    values = [
        "optimizer.lr=${trial.lr}",
        "optimizer.weight_decay=${trial.weight_decay}",
    ]
    if scheduled:
        values.append("scheduler.warmup_fraction=${trial.warmup_fraction}")
    if stage == "speedup":
        values += ["trainer.max_epochs=${trial.max_epochs}", "trainer.limit_train_batches=${trial.limit_train_batches}"]
    overrides = merge_overrides(
        wl["base"],
        [f"optimizer={optimizer}", f"scheduler={space['scheduler'] if scheduled else 'none'}"],
        wl.get("search", []) if stage == "search" else [],
        [f"label=tuning_{stage}_{optimizer}", f"seed={','.join(str(s) for s in seeds)}"],
        [trial_override(trials), *values],
        list(extra),
    )
    sweep_dir = Path(log_dir) / "tuning" / workload / stage / optimizer
    return Sweep(workload, stage, optimizer, sweep_dir, trials, list(seeds), overrides)


def plan(
    workload: str,
    stage: str,
    log_dir: str | Path = "logs",
    extra: list[str] = (),
    optimizers: list[str] | None = None,
    trials: int | None = None,
    space: dict[str, Any] | None = None,
) -> list[Sweep]:
    """The sweeps of one stage, one per optimizer. ``confirm`` and ``speedup`` read the search
    stage's results (every trial must have one)."""
    space = space or load_space()
    if stage not in STAGES:
        raise ConfigError(f"Unknown stage {stage!r}: choose one of {', '.join(STAGES)}.")
    names = optimizers or optimizer_names(reference=space["reference"])
    unknown = [n for n in names if n not in optimizer_names()]
    if unknown:
        raise ConfigError(f"Unknown optimizer {unknown[0]!r}: no conf/optimizer/{unknown[0]}.yaml.")
    n = space["trials"] if trials is None else trials
    points = unit_points(space, n)
    usual = {name: usual_settings(workload, name, space, extra) for name in names}

    def trial(name: str, k: Any, stage_: str, **more) -> dict[str, Any]:
        values = (
            trial_values(space, usual[name], points[k])
            if k != DEFAULT
            else {d: _sig(usual[name][d]) for d in space["dimensions"] if usual[name].get(d) is not None}
        )
        return {"optimizer": name, "stage": stage_, "k": k, **values, **more}

    if stage == "search":
        seeds = [space["search_seed"]]
        return [
            _sweep(space, workload, stage, o, [trial(o, k, stage) for k in range(n)], seeds, log_dir, extra)
            for o in names
        ]
    best = best_trials(workload, log_dir, names, n, space)
    if stage == "confirm":
        pairs = {o: [trial(o, best[o], stage), trial(o, DEFAULT, stage)] for o in names}  # tuned, usual
        return [_sweep(space, workload, stage, o, pairs[o], space["seeds"], log_dir, extra) for o in names]
    ref = space["reference"]
    if ref not in names:
        raise ConfigError(f"The speedup stage runs the reference optimizer {ref}: include it in --optimizers.")
    epochs = usual[ref]["max_epochs"]
    runs = []
    for f in space["speedup_factors"]:
        e, limit = steps_setting(f, epochs)
        runs.append(trial(ref, best[ref], stage, steps=float(f), max_epochs=e, limit_train_batches=limit))
    return [_sweep(space, workload, stage, ref, runs, space["seeds"], log_dir, extra)]


def planned_jobs(space: dict[str, Any]) -> dict[str, int]:
    """The jobs of each stage for one optimizer (the speed-up stage: the reference's only)."""
    return {
        "search": space["trials"],
        "confirm": 2 * len(space["seeds"]),  # the best trial and the usual setting
        "speedup": len(space["speedup_factors"]) * len(space["seeds"]),
    }


def status(
    workload: str,
    log_dir: str | Path = "logs",
    optimizers: list[str] | None = None,
    space: dict | None = None,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """How far a workload's tuning got: per stage and optimizer, the jobs planned, those with a result
    (``failed`` of them failed or diverged), those stopped or running, and the median seconds of
    the completed ones (``train_seconds``) made on ``device`` (default: this machine's CPU, as runs
    record it in ``time/device``; ``timed_here`` says so), else of all of them. Reads the runs
    only: no plan, so it works mid-search."""
    from lmvit.hardware import cpu_name

    device = device if device is not None else cpu_name()
    space = space or load_space()
    workload_config(space, workload)
    names = optimizers or optimizer_names(reference=space["reference"])
    planned = planned_jobs(space)
    rows = []
    for stage in STAGES:
        for name in names if stage != "speedup" else [space["reference"]]:
            recs = load_records([Path(log_dir) / "tuning" / workload / stage / name])
            done = {(r["k"], r["steps_factor"], r["seed"]): r for r in recs if r["status"] in DONE}
            timed = [r for r in done.values() if r["status"] == "completed" and r["train_seconds"]]
            here = [r for r in timed if r["device"] == device]  # a run's seconds hold for its own CPU
            quiet = [r for r in here if r["alone"]]  # and when it had the machine to itself
            seconds = [r["train_seconds"] for r in (quiet or here or timed)]
            rows.append(
                {
                    "stage": stage,
                    "optimizer": name,
                    "planned": planned[stage],
                    "done": len(done),
                    "failed": sum(r["status"] != "completed" for r in done.values()),
                    "unfinished": sum(r["status"] not in DONE for r in recs),
                    "median_seconds": float(np.median(seconds)) if seconds else math.nan,
                    "timed_here": bool(here),
                }
            )
    return rows


def status_text(workload: str, rows: list[dict[str, Any]]) -> str:
    """``status``'s rows as a few lines: one per stage, then the optimizers not done yet."""
    lines = []
    for stage in STAGES:
        rs = [r for r in rows if r["stage"] == stage]
        planned, done = sum(r["planned"] for r in rs), sum(r["done"] for r in rs)
        failed, unfinished = sum(r["failed"] for r in rs), sum(r["unfinished"] for r in rs)
        here = [r["median_seconds"] for r in rs if r["timed_here"]]
        seconds = here or [r["median_seconds"] for r in rs if math.isfinite(r["median_seconds"])]
        line = f"{workload} {stage}: {done} of {planned} jobs have a result"
        line += f" ({failed} failed or diverged)" if failed else ""
        line += f", {unfinished} stopped or running" if unfinished else ""
        if seconds and done < planned:
            left = float(np.median(seconds)) * (planned - done)
            where = "on this CPU" if here else "on other CPUs"
            line += f"; about {left / 3600:.1f} h left at the median {np.median(seconds):.0f} s a run {where}"
        lines.append(line)
        todo = [f"{r['optimizer']} {r['done']}/{r['planned']}" for r in rs if r["done"] < r["planned"]]
        if todo and done:
            lines.append("  not done: " + ", ".join(todo))
    return "\n".join(lines)


def steps_setting(factor: float, epochs: int) -> tuple[int, float]:
    """(max_epochs, limit_train_batches) for ``factor`` x the steps of ``epochs`` epochs: whole epochs
    when factor x epochs is whole (every run then validates at its end), else the same epochs with
    that fraction of each epoch's batches (factor < 1 only)."""
    if abs(factor * epochs - round(factor * epochs)) < 1e-9 and round(factor * epochs) >= 1:
        return int(round(factor * epochs)), 1.0
    if factor < 1:
        return epochs, float(factor)
    raise ConfigError(
        f"speedup_factors: {factor} x {epochs} epochs is not a whole number of epochs; choose another factor."
    )


# --------------------------------------------------------------------------------------------------
# Runs


def load_records(paths: list[str | Path]) -> list[dict[str, Any]]:
    """One record per run directory under ``paths`` that holds a ``metrics.json`` and a
    ``config.yaml`` with a ``trial`` (the runs of this module's sweeps)."""
    records = []
    for root in paths:
        if not Path(root).exists():  # a sweep not started yet
            continue
        for run in find_run_dirs(root):
            metrics = read_metrics(run)
            if metrics is None or not (run / "config.yaml").is_file():
                continue
            cfg = OmegaConf.create(read_config(run))
            trial = cfg.get("trial")
            if trial is None:
                continue
            history = metrics.get("history") or []
            final = metrics.get("final") or {}
            monitor = str(cfg.monitor.metric)
            records.append(
                {
                    "run": str(run),
                    "workload": metrics.get("task") or str(cfg.task),
                    "optimizer": str(trial.optimizer),
                    "stage": str(trial.stage),
                    "k": str(trial.k),
                    "steps_factor": float(trial.get("steps", 1.0)),
                    "seed": int(cfg.seed),
                    "status": run_status(metrics, cfg),  # "untested": trained, killed while it tested
                    "monitor": monitor,
                    "mode": str(cfg.monitor.mode),
                    "score": final.get(monitor),
                    "val_loss": final.get("val/loss"),
                    "steps": int(history[-1]["step"]) if history and "step" in history[-1] else None,
                    "lr": effective_lr(read_config(run)),  # the lr it used
                    "weight_decay": float(trial.weight_decay),
                    "warmup_fraction": float(trial.warmup_fraction) if "warmup_fraction" in trial else None,
                    "train_seconds": metrics.get("train_seconds"),
                    "precision": metrics.get("precision") or OmegaConf.select(cfg, "trainer.precision"),
                    "device": (history[-1].get("time/device") if history else None) or "unknown",
                    "alone": _alone(history),
                }
            )
    return records


def _alone(history: list[dict[str, Any]]) -> bool:
    """The run's epochs had the machine to themselves by the load rule of :mod:`analysis.timing`."""
    machine = measurement(history)
    return bool(machine["load_1m"] <= machine["cores"] + LOAD_SLACK)  # False when either is NaN


def best_trials(workload: str, log_dir, names: list[str], n: int, space) -> dict[str, int]:
    """Each optimizer's best search trial by its final monitored validation metric (a failed trial
    scores ``failed_score``); every trial must have a result."""
    failed = workload_config(space, workload)["failed_score"]
    best = {}
    for name in names:
        sweep_dir = Path(log_dir) / "tuning" / workload / "search" / name
        recs = [r for r in load_records([sweep_dir]) if r["status"] in DONE and r["stage"] == "search"]
        have = {int(r["k"]): r for r in recs if int(r["k"]) < n}
        if len(have) < n:
            raise UserError(
                f"The search of {name} ({sweep_dir}) has {len(have)} of {n} trials done: "
                f"run `python -m analysis.tuning run {workload} --stage search` first."
            )
        sign = 1 if recs[0]["mode"] == "max" else -1
        scores = {k: score_of(r, failed) for k, r in have.items()}
        best[name] = max(sorted(scores), key=lambda k: sign * scores[k])
    return best


def score_of(record: dict[str, Any], failed_score: float) -> float:
    s = record["score"]
    return float(s) if record["status"] == "completed" and s is not None and math.isfinite(s) else float(failed_score)


def done_jobs(sweep: Sweep) -> set[tuple]:
    return {
        (r["stage"], r["k"], str(r["steps_factor"]), r["seed"])
        for r in load_records([sweep.sweep_dir])
        if r["status"] in DONE
    }


def checkpoint_bytes(run: Path) -> int:
    """The size of a run's ``checkpoints/`` folder (0 when it has none)."""
    folder = Path(run) / "checkpoints"
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def clear_checkpoints(sweep: Sweep) -> int:
    """Delete the ``checkpoints/`` of the sweep's jobs that have their result (:data:`DONE`): the
    report and a rerun read only their records. Jobs still to finish keep theirs (a rerun resumes
    from them). Returns the largest folder deleted, in bytes (0 when none was)."""
    largest = 0
    for record in load_records([sweep.sweep_dir]):
        if record["status"] in DONE and (Path(record["run"]) / "checkpoints").is_dir():
            largest = max(largest, checkpoint_bytes(Path(record["run"])))
            shutil.rmtree(Path(record["run"]) / "checkpoints")
    return largest


def disk_needed(jobs: int, per_job: int) -> int:
    """Bytes a sweep of ``jobs`` jobs needs free: each job's checkpoints (kept until the sweep ends,
    then cleared by :func:`clear_checkpoints`), and :data:`DISK_MARGIN` for logs and records."""
    return jobs * per_job + DISK_MARGIN


def check_disk(sweep: Sweep, jobs: int, per_job: int) -> None:
    """A :class:`UserError` (one line) before a sweep that would fill the disk its log folder is on."""
    folder = Path(sweep.sweep_dir)
    while not folder.exists():  # a sweep not started yet: the disk of its nearest existing folder
        folder = folder.parent
    free, need = shutil.disk_usage(folder).free, disk_needed(jobs, per_job)
    if free < need:
        raise UserError(
            f"{sweep.stage} {sweep.optimizer}: {free / 1e9:.1f} GB free on the disk of {folder}, and its "
            f"{jobs} jobs need about {need / 1e9:.1f} GB ({per_job / 1e9:.2f} GB of checkpoints a job, "
            f"deleted once it has its result, and {DISK_MARGIN / 1e9:.0f} GB for logs): free some space, "
            "or pass --log-dir on a larger disk, then rerun the same command"
        )


def run_stage(
    sweeps: list[Sweep],
    python: str = sys.executable,
    dry_run: bool = False,
    publish: Path | None = None,
    keep_checkpoints: bool = False,
) -> list[str]:
    """Launch each sweep whose jobs do not all have a result (the same command as before, so a
    resumable sweep skips what completed). With ``publish``, after each sweep the records of its
    finished runs go to ``publish/<workload>/<stage>/<optimizer>`` (lmvit.resume.publish_records:
    kept in the repository, they outlast the log folder). After each sweep the checkpoints of its
    jobs with a result are deleted, unless ``keep_checkpoints`` (:func:`clear_checkpoints`); before
    each, the disk must hold what its jobs will write (:func:`check_disk`, sized by the largest
    checkpoint folder seen so far in these sweeps). Returns what was done, one line per sweep."""
    lines = []
    # a job's checkpoint footprint: measured on the jobs in the sweep folders (a stopped one keeps its own)
    per_job = max(
        (checkpoint_bytes(r) for s in sweeps if s.sweep_dir.is_dir() for r in find_run_dirs(s.sweep_dir)), default=0
    )
    for sweep in sweeps:
        if not (keep_checkpoints or dry_run) and sweep.sweep_dir.is_dir():  # what an earlier session left
            per_job = max(per_job, clear_checkpoints(sweep))
        missing = sweep.jobs() - done_jobs(sweep)
        if not missing:
            lines.append(f"{sweep.stage} {sweep.optimizer}: all {len(sweep.jobs())} jobs done, skipped")
            print(lines[-1], flush=True)
            continue
        lines.append(f"{sweep.stage} {sweep.optimizer}: {len(missing)} of {len(sweep.jobs())} jobs to run")
        print(lines[-1], flush=True)
        if dry_run:
            continue
        check_disk(sweep, len(missing), per_job)
        rc, stopped = _run_sweep([python, *sweep.argv()])
        if rc != 0:  # a trial failed or diverged (a result), or the sweep stopped: the next ones still run
            lines.append(f"{sweep.stage} {sweep.optimizer}: train.py exited {rc}; rerun the same command to continue")
            print(lines[-1], file=sys.stderr, flush=True)
        if not keep_checkpoints:
            per_job = max(per_job, clear_checkpoints(sweep))
        if publish is not None:
            target = Path(publish) / sweep.workload / sweep.stage / sweep.optimizer
            n = len(publish_records(sweep.sweep_dir, target)) if sweep.sweep_dir.is_dir() else 0
            lines.append(f"{sweep.stage} {sweep.optimizer}: {n} finished runs published to {target}")
            print(lines[-1], flush=True)
        if stopped is not None:  # no next sweep: the whole command was told to stop
            print(f"Stopped ({signal.Signals(stopped).name}); rerun the same command to continue", file=sys.stderr)
            raise SystemExit(128 + stopped)
    return lines


def _run_sweep(argv: list[str]) -> tuple[int, int | None]:
    """Run one sweep to its end: (its exit code, the signal that stopped this command, if one did).

    A SIGTERM or Ctrl-C to the process group reaches the sweep too, which then saves its running job
    where it stands (resumable) and exits; this process waits for that instead of dying first (or,
    as ``subprocess.run`` does on Ctrl-C, killing the sweep mid-save), so what finished is published."""
    stopped: list[int] = []
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in handlers:
        signal.signal(sig, lambda signum, frame: stopped.append(signum))
    try:
        with subprocess.Popen(argv, cwd=ROOT) as proc:
            rc = proc.wait()  # resumed after each signal (PEP 475) until the sweep exits
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return rc, stopped[0] if stopped else None


# --------------------------------------------------------------------------------------------------
# Statistics (small functions: the report's shared statistics can replace their bodies)


def expected_best(values: list[float], mode: str = "max") -> np.ndarray:
    """Dodge et al. 2019: the expected best of k trials drawn with replacement from the N observed
    ones, k = 1..N: sum_i v_(i) [(i/N)^k - ((i-1)/N)^k], v_(1) <= ... <= v_(N) (for ``mode='min'``
    the order is reversed: the expected lowest)."""
    v = np.sort(np.asarray(values, dtype=float))
    if mode == "min":
        v = v[::-1]
    n = len(v)
    i = np.arange(1, n + 1)
    return np.array([float(np.sum(v * ((i / n) ** k - ((i - 1) / n) ** k))) for k in range(1, n + 1)])


def t_interval(values: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and Student-t interval (nan bounds with fewer than 2 values): ``analysis.stats.summarize``."""
    s = summarize(values, level)
    return s.mean, s.ci_low, s.ci_high


def steps_to_reach(curve: list[tuple[float, float]], target: float) -> tuple[float, str]:
    """Steps a loss curve (steps, loss) needs to reach ``target``, interpolated linearly in
    log(steps) between the first pair of points that brackets it. Returns (steps, "") or, beyond
    the points, (the nearest end's steps, "<" or ">"): no extrapolation."""
    pts = sorted(curve)
    if target >= pts[0][1]:
        return pts[0][0], "<" if target > pts[0][1] else ""
    for (s0, l0), (s1, l1) in zip(pts, pts[1:]):
        if l1 <= target <= l0 and l0 != l1:
            w = (l0 - target) / (l0 - l1)
            return math.exp(math.log(s0) + w * (math.log(s1) - math.log(s0))), ""
    return pts[-1][0], ">"


def speedups(reference: dict[int, list[tuple[float, float]]], runs: dict[int, tuple[float, float]]):
    """Per seed: (steps the reference needs to reach the run's final loss) / (the run's steps), and
    the censoring mark. ``reference``: seed -> [(steps, final loss)] of the reference at each step
    multiple; ``runs``: seed -> (steps, final loss) of the optimizer. Seeds in both only (paired)."""
    out = {}
    for seed in sorted(set(reference) & set(runs)):
        steps, loss = runs[seed]
        need, mark = steps_to_reach(reference[seed], loss)
        out[seed] = (need / steps, mark)
    return out


def summarize_speedup(per_seed: dict[int, tuple[float, str]], level: float = LEVEL) -> dict[str, Any]:
    """Geometric mean of the per-seed speed-ups with a t interval on their logs. When seeds lie beyond
    the reference's points (their ratio is only known to be above or below the bound of its steps),
    the geometric mean with those seeds at their bound is a bound on it: "> 2x", "< 0.62x" (``bound``
    and ``side``); no number when seeds lie beyond on both sides."""
    ratios = [r for r, _ in per_seed.values()]
    marks = [m for _, m in per_seed.values()]
    if not ratios:
        return {"speedup": math.nan, "low": math.nan, "high": math.nan, "text": "n/a", "n": 0}
    if any(marks):  # a censored seed's ratio is its bound: the geometric mean is then a bound too
        sides = {m for m in marks if m}
        out = {"speedup": math.nan, "low": math.nan, "high": math.nan, "n": len(ratios), "bound": math.nan}
        if len(sides) > 1:
            return {**out, "side": "", "text": "beyond the reference's steps on both sides"}
        side = sides.pop()
        bound = math.exp(float(np.mean(np.log(ratios))))
        beyond = sum(bool(m) for m in marks)
        text = f"{side} {bound:.2g}x" + (
            f" ({beyond} of {len(marks)} seeds beyond the reference's steps)" * (beyond < len(marks))
        )
        return {**out, "bound": bound, "side": side, "text": text, "short": f"{side} {bound:.2g}x"}
    mean, low, high = t_interval([math.log(r) for r in ratios], level)
    out = {"speedup": math.exp(mean), "low": math.exp(low), "high": math.exp(high), "n": len(ratios)}
    out["text"] = f"{out['speedup']:.2f}x" + (f" [{out['low']:.2f}, {out['high']:.2f}]" if len(ratios) > 1 else "")
    return out


def bench_line(bench_file: Path | None, workload: str) -> dict[str, Any]:
    """The last ``optimizers`` line of bench/optimizers.py's JSON lines with ``workload``; {} when
    there is none. (A line without one times the ViT in fp32, not a tuning run's step: not used.)"""
    if bench_file is None or not Path(bench_file).is_file():
        return {}
    found: dict[str, Any] = {}
    for line in Path(bench_file).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("bench") == "optimizers" and rec.get("workload") == workload:
            found = rec
    return found


def step_time_ratios(bench_file: Path | None, workload: str) -> dict[str, float]:
    """Time per step relative to AdamW (paired) on ``workload``'s model, from :func:`bench_line`;
    {} when there is none."""
    rec = bench_line(bench_file, workload)
    return {rec["baseline"]: 1.0, **rec.get("paired_ratio", {})} if rec else {}


# --------------------------------------------------------------------------------------------------
# Report


def report(paths: list[str | Path], out: str | Path, bench_file: Path | None = None) -> Path:
    """The section "Optimizers, tuned equally" (markdown, CSVs, PNGs) into ``out``; returns the markdown."""
    import pandas as pd

    space = load_space()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recs = pd.DataFrame(load_records(paths))
    if recs.empty:
        raise UserError(f"No tuning runs (metrics.json with a trial) under {', '.join(map(str, paths))}.")
    lines = ["## Optimizers, tuned equally", ""]
    lines.append(
        f"Every optimizer: {space['trials']} quasi-random trials (scrambled Sobol, seed {space['seed']}) "
        f"around its usual setting ({', '.join(space['dimensions'])}), the best by final validation "
        f"rerun with seeds {space['seeds']}; speed-up = steps the tuned {space['reference']} needs to "
        "reach the optimizer's final validation loss / the optimizer's steps (geometric mean over "
        f"seeds, {LEVEL:.0%} t interval of the logs)."
    )
    for workload, wrecs in recs.groupby("workload"):
        machine = (bench_line(bench_file, workload).get("machine") or {}).get("cpu_model")
        lines += _workload_section(workload, wrecs, space, out, step_time_ratios(bench_file, workload), machine)
    md = out / "optimizer_tuning.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def _workload_section(
    workload, recs, space, out: Path, times: dict[str, float], bench_machine: str | None = None
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    wl = workload_config(space, workload)
    precisions = recs["precision"].value_counts()
    if len(precisions) > 1:  # one comparison, one arithmetic
        counts = ", ".join(f"{n} runs in {p}" for p, n in precisions.items())
        raise UserError(
            f"The {workload} runs mix precisions ({counts}): compare runs of one precision (conf/tuning/space.yaml "
            "sets it: precision); remove the others' run folders and run their jobs again."
        )
    mode, monitor = recs["mode"].iloc[0], recs["monitor"].iloc[0]
    lines = ["", f"### {workload}: {' '.join(wl['base'])}", ""]
    machines = recs["device"].value_counts()  # accuracies compare across CPUs; seconds do not
    lines.append("Runs made on: " + "; ".join(f"{d}: {n} runs" for d, n in sorted(machines.items())) + ".")
    lines += ["", "VERDICT"]  # written once the table is: the section's one-line answer comes first
    # (a) budget curves
    search = recs[(recs.stage == "search") & recs.status.isin(DONE)]  # a running trial has no result yet
    curves = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, g) in enumerate(search.groupby("optimizer")):
        scores = [score_of(r, wl["failed_score"]) for r in g.to_dict("records")]
        eb = expected_best(scores, mode)
        curves += [{"optimizer": name, "k": k + 1, f"expected_best_{monitor}": v} for k, v in enumerate(eb)]
        # eleven optimizers: tab10 would repeat a colour; the marker tells the pairs of tab20 apart
        ax.plot(range(1, len(eb) + 1), eb, marker="o^sDv"[i % 5], markersize=3, color=plt.cm.tab20(i % 20), label=name)
    ax.set_xlabel("trials k")
    ax.set_ylabel(f"expected best final {monitor}")
    ax.set_title(f"{workload}: expected best after k trials (Dodge et al. 2019)")
    if curves:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / f"tuning_{workload}_budget.png", dpi=120)
    plt.close(fig)
    pd.DataFrame(curves).to_csv(out / f"tuning_{workload}_budget.csv", index=False)
    lines += _search_table(workload, search, wl, space, monitor, mode, out)
    lines += [f"![budget curves](tuning_{workload}_budget.png)", ""]
    # (b, c, d) default vs tuned, speed-up
    conf = recs[(recs.stage == "confirm") & (recs.status == "completed")]
    ref = space["reference"]
    metric = wl["speedup_metric"].replace("val/", "val_")
    curve: dict[int, list[tuple[float, float]]] = {}
    for r in recs[(recs.optimizer == ref) & (recs.stage.isin(["confirm", "speedup"])) & (recs.k != DEFAULT)].to_dict(
        "records"
    ):
        if r["status"] == "completed" and r["steps"] and r[metric] is not None:
            curve.setdefault(r["seed"], []).append((r["steps"], r[metric]))
    _check_speedup_steps(recs, ref)
    ref_tuned = conf[(conf.optimizer == ref) & (conf.k != DEFAULT)]
    ref_loss = {r["seed"]: r[metric] for r in ref_tuned.to_dict("records") if r[metric] is not None}
    rows, forest = [], {}
    for name, g in conf.groupby("optimizer"):
        tuned, default = g[g.k != DEFAULT], g[g.k == DEFAULT]
        # against the tuned reference at the same steps, paired by seed: a lower final loss is a
        # speed-up above 1 (the reference's loss falls with its steps), a higher one below 1; this
        # test needs no interpolation and holds where the speed-up lies beyond the reference's runs
        vs_ref = None
        if name != ref:
            own = {r["seed"]: r[metric] for r in tuned.to_dict("records") if r[metric] is not None}
            vs_ref = compare_metric(wl["speedup_metric"], own, ref_loss).difference
        tm, tl, th = t_interval(tuned.score.tolist())
        dm, dl, dh = t_interval(default.score.tolist())
        shared = sorted(set(tuned.seed) & set(default.seed))
        d = compare_metric(  # paired over the shared seeds; perplexities on the logs
            monitor, tuned.set_index("seed").score.to_dict(), default.set_index("seed").score.to_dict()
        ).difference
        p = d.p if d is not None and d.method == "paired t" else math.nan
        runs = {r["seed"]: (r["steps"], r[metric]) for r in tuned.to_dict("records") if r["steps"]}
        sp = summarize_speedup(speedups({s: c for s, c in curve.items() if len(c) >= 2}, runs))
        wall = sp["speedup"] / times[name] if name in times and math.isfinite(sp["speedup"]) else math.nan
        wall_text = f"{wall:.2f}x" if math.isfinite(wall) else "n/a"
        if name in times and math.isfinite(sp.get("bound", math.nan)):  # a bound in steps is one in time too
            wall_text = f"{sp['side']} {sp['bound'] / times[name]:.2g}x"
        forest[name] = {**sp, "wallclock": wall}
        best = tuned.iloc[0] if len(tuned) else None
        rows.append(
            {
                "optimizer": name,
                "trial": best["k"] if best is not None else "",
                "lr": best["lr"] if best is not None else math.nan,
                "weight_decay": best["weight_decay"] if best is not None else math.nan,
                "warmup_fraction": best["warmup_fraction"] if best is not None else math.nan,
                f"tuned_{monitor}": tm,
                "tuned_low": tl,
                "tuned_high": th,
                f"default_{monitor}": dm,
                "default_low": dl,
                "default_high": dh,
                "seeds": len(shared),
                "p_tuned_vs_default": p,
                f"{metric}_vs_ref": vs_ref.diff if vs_ref is not None else math.nan,
                "p_vs_ref": vs_ref.p if vs_ref is not None and vs_ref.method == "paired t" else math.nan,
                "speedup_steps": sp["speedup"],
                "speedup_low": sp["low"],
                "speedup_high": sp["high"],
                "speedup": sp["text"],
                "step_time_vs_ref": times.get(name, math.nan),
                "speedup_wallclock": wall,
                "wallclock": wall_text,
            }
        )
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = holm(table["p_tuned_vs_default"].tolist())
        table["p_vs_ref_holm"] = holm(table["p_vs_ref"].tolist())
        table["verdict"] = [_verdict(r, ref, metric) for r in table.to_dict("records")]
    table.to_csv(out / f"tuning_{workload}.csv", index=False)
    lines.append(
        f"Final {monitor} ({mode} is better), tuned and at the usual setting, mean [{LEVEL:.0%} t interval] "
        "over seeds; p: paired t over shared seeds (perplexities on the logs), Holm-adjusted over the optimizers. "
        f"Against tuned {ref}: its final {wl['speedup_metric']} against {ref}'s at the same steps, paired by seed, "
        f"Holm-adjusted over the optimizers (a family of its own); faster or slower at p < {1 - LEVEL:.2g}, "
        "else inconclusive. "
        + (
            f"Wall-clock: the step speed-up / the time per step relative to {ref} on this workload's model "
            f"(`bench/optimizers.py --workload {workload}`, paired"
            + (f", measured on {bench_machine}" if bench_machine else "")
            + ")."
            if times
            else f"Wall-clock: n/a without a `--bench` file with a line of `bench/optimizers.py --workload {workload}`."
        )
    )
    lines.append("")
    lines[lines.index("VERDICT")] = verdict_line(workload, recs, table, space, monitor)
    if not rows:
        return lines + ["(No completed confirm run yet.)", ""]
    if _speedup_figure(workload, forest, ref, out / f"tuning_{workload}_speedup.png"):
        lines += [f"![speed-ups over tuned {ref}](tuning_{workload}_speedup.png)", ""]
    lines.append(
        "| optimizer | tuned | usual setting | p (Holm) | speed-up (steps) | wall-clock | against tuned "
        f"{ref} | p (Holm) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in table.to_dict("records"):
        lines.append(
            f"| {r['optimizer']} | {_ci(r[f'tuned_{monitor}'], r['tuned_low'], r['tuned_high'])} | "
            f"{_ci(r[f'default_{monitor}'], r['default_low'], r['default_high'])} | {_p(r.get('p_holm'))} | "
            f"{r['speedup']} | {r['wallclock']} | {r['verdict']} | {_p(r.get('p_vs_ref_holm'))} |"
        )
    return lines + [""]


STEPS_SLACK = 0.05  # a speed-up run's steps may differ from its factor x the confirm run's by this fraction
# (Lightning rounds a fraction of an epoch's batches down to whole batches)


def _check_speedup_steps(recs, ref: str) -> None:
    """Every completed speed-up run of the reference trained its factor x the steps of the confirm run
    of its seed; a run that did not (a wrong limit, a changed budget) would bend the curve the speed-ups
    are read from, so it is refused, named, before any number is written."""
    confirm = {
        r["seed"]: r["steps"]
        for r in recs[(recs.optimizer == ref) & (recs.stage == "confirm") & (recs.k != DEFAULT)].to_dict("records")
        if r["status"] == "completed" and r["steps"]
    }
    runs = recs[(recs.optimizer == ref) & (recs.stage == "speedup") & (recs.status == "completed")]
    for r in runs.to_dict("records"):
        if r["seed"] not in confirm or not r["steps"]:
            continue
        want = r["steps_factor"] * confirm[r["seed"]]
        if abs(r["steps"] - want) > STEPS_SLACK * want:
            raise UserError(
                f"The speed-up run {r['run']} trained {r['steps']} steps, not {r['steps_factor']:g} x the "
                f"{confirm[r['seed']]} of {ref}'s confirm run of seed {r['seed']} ({want:.0f}): remove its "
                "folder and run its job again (python -m analysis.tuning run <workload> --stage speedup)."
            )


def verdict_line(workload: str, recs, table, space: dict[str, Any], monitor: str) -> str:
    """The workload's answer in one line (the README quotes it): which optimizers are faster, slower or
    inconclusive against the tuned reference, with their speed-ups, once every optimizer's confirm runs
    and the reference's speed-up runs have a result; until then, how far those stages got."""
    ref, seeds = space["reference"], space["seeds"]
    names = optimizer_names(reference=ref)
    finished = recs[recs.status.isin(DONE)].drop_duplicates(["stage", "optimizer", "k", "steps_factor", "seed"])
    planned = planned_jobs(space)
    count = {
        stage: (
            len(finished[(finished.stage == stage) & finished.optimizer.isin(names if stage != "speedup" else [ref])]),
            planned[stage] * (len(names) if stage != "speedup" else 1),
        )
        for stage in ("search", "confirm", "speedup")
    }
    head = f"**Verdict** ({workload})"
    if any(done < total for stage, (done, total) in count.items() if stage != "search"):
        (r, rt), (c, ct), (s, st) = count["search"], count["confirm"], count["speedup"]
        return (
            f"{head}: none yet; the search stage has {r} of {rt} runs, the confirm stage {c} of {ct}, "
            f"the speed-up stage {s} of {st}."
        )
    rows = table.set_index("optimizer")
    groups = {v: [n for n in names if n in rows.index and rows.loc[n, "verdict"] == v] for v in ("faster", "slower")}
    groups["inconclusive"] = [n for n in names if n != ref and n not in groups["faster"] + groups["slower"]]

    def named(n: str) -> str:  # its speed-up in steps, and in time where the bench measured its step
        wall = rows.loc[n, "wallclock"]
        return f"{n} at {rows.loc[n, 'speedup']} in steps" + (f" and {wall} wall-clock" if wall != "n/a" else "")

    said = "; ".join(f"{v}: {', '.join(map(named, ns)) if ns else 'none'}" for v, ns in groups.items())
    r = rows.loc[ref]
    return (
        f"{head}, {len(names) - 1} optimizers against tuned {ref}, each with {space['trials']} search trials and "
        f"seeds {', '.join(map(str, seeds))} (final validation loss, paired by seed, Holm-adjusted): {said}. Tuned "
        f"{ref}'s {monitor} {_ci(r[f'tuned_{monitor}'], r['tuned_low'], r['tuned_high'])}, its usual setting's "
        f"{_ci(r[f'default_{monitor}'], r['default_low'], r['default_high'])} (Holm p {_p(r.get('p_holm'))})."
    )


def _speedup_figure(workload: str, forest: dict[str, dict[str, Any]], ref: str, path: Path) -> bool:
    """Each optimizer's step speed-up over the tuned reference on a log axis: the geometric mean over
    seeds with its interval, a bound as an arrow where the seeds lie beyond the reference's steps, and
    the wall-clock speed-up as an open marker. False (nothing drawn) when no speed-up is known yet."""
    drawn = {n: sp for n, sp in forest.items() if n != ref and sp.get("n")}
    known = [sp for sp in drawn.values() if math.isfinite(sp["speedup"]) or math.isfinite(sp.get("bound", math.nan))]
    if not known:
        path.unlink(missing_ok=True)
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    def at(sp: dict[str, Any]) -> float:  # where it is drawn: the speed-up, else its bound (nan: not drawn)
        return sp["speedup"] if math.isfinite(sp["speedup"]) else sp.get("bound", math.nan)

    order = sorted(drawn.items(), key=lambda it: (not math.isfinite(at(it[1])), np.nan_to_num(at(it[1]))))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(order) + 1.6))
    for y, (_, sp) in enumerate(order):
        if math.isfinite(sp["speedup"]):
            err = [[sp["speedup"] - sp["low"]], [sp["high"] - sp["speedup"]]] if math.isfinite(sp["low"]) else None
            ax.errorbar(sp["speedup"], y, xerr=err, fmt="o", color="C0", capsize=3)
            if math.isfinite(sp["wallclock"]):
                ax.plot(sp["wallclock"], y, "o", mfc="none", color="C3")
        elif math.isfinite(sp.get("bound", math.nan)):  # every seed beyond the reference's steps
            ax.plot(sp["bound"], y, ">" if sp["side"] == ">" else "<", color="C0")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks(range(len(order)), [f"{name}  {sp.get('short', sp['text'])}" for name, sp in order], fontsize=8)
    ax.set_ylim(-0.7, len(order) - 0.3)
    ax.set_xlabel(f"speed-up over tuned {ref} (> 1: faster)")
    ax.plot([], [], "o", color="C0", label=f"steps ({LEVEL:.0%} t interval over seeds)")
    ax.plot([], [], "o", mfc="none", color="C3", label="wall-clock (steps / time per step)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{workload}: speed-up over tuned {ref}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _search_table(workload, search, wl, space, monitor: str, mode: str, out: Path) -> list[str]:
    """Each optimizer's search so far: trials with a result, the best one and its setting."""
    import pandas as pd

    rows = []
    for name, g in search.groupby("optimizer"):
        recs = g.to_dict("records")
        scores = [score_of(r, wl["failed_score"]) for r in recs]
        i = int(np.argmax(scores) if mode == "max" else np.argmin(scores))
        best = recs[i]
        rows.append(
            {
                "optimizer": name,
                "trials": len(recs),
                "failed": sum(r["status"] != "completed" for r in recs),
                "best_trial": best["k"],
                "lr": best["lr"],
                "weight_decay": best["weight_decay"],
                "warmup_fraction": best["warmup_fraction"],
                f"best_{monitor}": scores[i],
                f"median_{monitor}": float(np.median(scores)),
                "near_bound": "; ".join(near_bounds(space, int(best["k"]), best)),
            }
        )
    pd.DataFrame(rows).to_csv(out / f"tuning_{workload}_search.csv", index=False)
    n = space["trials"]
    lines = [
        "",
        f"Search ({' '.join(wl['search'])}, seed {space['search_seed']}; {n} trials an optimizer): final {monitor} "
        "of the best trial and the median trial (a failed or diverged one scores "
        f"{wl['failed_score']:g}); lr as run (after the optimizer's lr_scale). Near a bound: a setting of the "
        f"best trial in the outer {EDGE:.0%} of its searched range (in the unit cube of the Sobol points), where "
        "the best setting may lie beyond the space; no trial beyond it was run.",
        "",
        f"| optimizer | trials | best {monitor} | median | best trial: lr, weight decay, warm-up | near a bound |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        warm = (
            "none" if r["warmup_fraction"] is None or pd.isna(r["warmup_fraction"]) else f"{r['warmup_fraction']:.3f}"
        )
        done = f"{r['trials']} of {n}" + (f" ({r['failed']} failed)" if r["failed"] else "")
        lines.append(
            f"| {r['optimizer']} | {done} | {r[f'best_{monitor}']:.4g} | {r[f'median_{monitor}']:.4g} | "
            f"{r['lr']:.3g}, {r['weight_decay']:.3g}, {warm} | {r['near_bound'] or '-'} |"
        )
    return lines + [""]


def _verdict(row: dict, ref: str, metric: str) -> str:
    """faster / slower than the tuned reference (its Holm-adjusted p under 1 - LEVEL), else
    inconclusive; "not tested" with fewer than 2 shared seeds."""
    if row["optimizer"] == ref:
        return "reference"
    p = row.get("p_vs_ref_holm")
    if p is None or not math.isfinite(p):
        return "not tested (< 2 shared seeds)"
    if p >= 1 - LEVEL:
        return "inconclusive"
    return "faster" if row[f"{metric}_vs_ref"] < 0 else "slower"


def _ci(mean: float, low: float, high: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.4g}" + (f" [{low:.4g}, {high:.4g}]" if math.isfinite(low) else "")


def _p(p: float | None) -> str:
    return "n/a" if p is None or not math.isfinite(p) else f"{p:.3g}"


# --------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.tuning", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in ("plan", "run"):
        p = sub.add_parser(cmd, help=f"{cmd} the train.py sweeps of a workload")
        p.add_argument("workload", help="a workload of conf/tuning/space.yaml: vit | lstm")
        p.add_argument("--stage", choices=STAGES, action="append", help="default: every stage in order")
        p.add_argument("--log-dir", default="logs", help="sweeps go to <log-dir>/tuning/<workload>/<stage>/<optimizer>")
        p.add_argument("--optimizers", default=None, help="comma-separated (default: every conf/optimizer/*.yaml)")
        p.add_argument("--trials", type=int, default=None, help="the first N trials only (default: the space's)")
        if cmd == "run":
            p.add_argument(
                "--publish",
                type=Path,
                default=None,
                metavar="DIR",
                help="after each sweep, its finished runs' records go to DIR/<workload>/<stage>/<optimizer>",
            )
            p.add_argument(
                "--keep-checkpoints",
                action="store_true",
                help="keep the checkpoints of jobs with a result (default: deleted after each sweep)",
            )
    p = sub.add_parser("status", help="how far a workload's stages got (jobs with a result, hours left)")
    p.add_argument("workload", help="a workload of conf/tuning/space.yaml: vit | lstm")
    p.add_argument("--log-dir", default="logs", help="as given to run")
    p.add_argument("--optimizers", default=None, help="comma-separated (default: every conf/optimizer/*.yaml)")
    p = sub.add_parser("report", help='the section "Optimizers, tuned equally"')
    p.add_argument("paths", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--bench", default=None, help="bench/optimizers.py JSON lines (time per step)")
    args, overrides = parser.parse_known_args(argv)  # what is left: train.py overrides (they win)
    if args.cmd in ("report", "status") and overrides or any(o.startswith("-") or "=" not in o for o in overrides):
        parser.error(f"unrecognized arguments: {' '.join(overrides)} (train.py overrides are key=value)")
    args.overrides = overrides
    try:
        if args.cmd == "report":
            print(report(args.paths, args.out, Path(args.bench) if args.bench else None))
            return 0
        optimizers = args.optimizers.split(",") if args.optimizers else None
        if args.cmd == "status":
            print(status_text(args.workload, status(args.workload, args.log_dir, optimizers)))
            return 0
        for stage in args.stage or (STAGES if args.cmd == "run" else ["search"]):
            sweeps = plan(args.workload, stage, args.log_dir, args.overrides, optimizers, args.trials)
            if args.cmd == "plan":
                print("\n".join(s.command() for s in sweeps))
            else:
                run_stage(sweeps, publish=args.publish, keep_checkpoints=args.keep_checkpoints)
                left = {s.optimizer: len(s.jobs() - done_jobs(s)) for s in sweeps}
                if any(left.values()):  # interrupted: the next stage needs every result of this one
                    unfinished = ", ".join(f"{o} {n}" for o, n in left.items() if n)
                    print(
                        f"error: {stage} stage unfinished ({unfinished} jobs without a result); "
                        "rerun the same command to continue",
                        file=sys.stderr,
                    )
                    return 1
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
