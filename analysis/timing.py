"""Was a run's time measured alone? The rule behind every time comparison of the report.

Each epoch of a run records the machine it ran on in ``metrics.json``'s history
(``lightning_modules/callbacks/timing.py``: ``time/load_1m``, ``time/cores``, ``time/cpus``,
``time/device``, ``time/host``, ``time/end_unix``). A run was **measured alone** when

1. every epoch has a load record, and the mean over its epochs of the 1-minute load average
   (runnable processes of the whole machine, the run's own included) is at most the machine's
   cores plus :data:`LOAD_SLACK`: one training job keeps at most every core busy, so a load above
   that means something else competed for the cores;
2. no other run found by the report trained on the same host at the same time (their training
   intervals, first epoch start to last epoch end, do not overlap): two jobs sharing a GPU
   or a set of cores can leave the load average low on a many-core machine.

A time comparison is decided only when every run on both sides was measured alone and all ran on
one kind of device (``time/device``: the GPU's name, or the CPU's model name with its family/model and
bf16 instructions); a memory comparison only
on one kind of device. Otherwise the check is "not tested" with the reason.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

LOAD_SLACK = 0.5  # load average allowed above the core count (background processes, the shell)
TIME_METRICS = ("train_seconds",)
DEVICE_METRICS = ("train_seconds", "peak_memory_mb")


def measurement(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The machine a run trained on, from its epoch history: ``load_1m`` (mean over epochs, NaN
    when an epoch has no record), ``load_max``, ``cores``, ``device``, ``host``, ``train_start_unix``,
    ``train_end_unix``."""
    rows = [r for r in history if isinstance(r, dict)]
    loads = [r.get("time/load_1m") for r in rows]
    recorded = bool(rows) and all(isinstance(x, (int, float)) for x in loads)
    ends = [r["time/end_unix"] for r in rows if isinstance(r.get("time/end_unix"), (int, float))]
    first = min(rows, key=lambda r: r.get("epoch", 0)) if rows else {}
    start = (
        first["time/end_unix"] - first.get("time/epoch_s", 0.0)
        if isinstance(first.get("time/end_unix"), (int, float))
        else math.nan
    )
    devices = {r.get("time/device") for r in rows} - {None}
    hosts = {r.get("time/host") for r in rows} - {None}
    cores = [r.get("time/cores") for r in rows if isinstance(r.get("time/cores"), (int, float))]
    return {
        "load_1m": sum(loads) / len(loads) if recorded else math.nan,
        "load_max": max(loads) if recorded else math.nan,
        "cores": min(cores) if cores else math.nan,
        "device": " / ".join(sorted(devices)) if devices else None,
        "host": " / ".join(sorted(hosts)) if hosts else None,
        "train_start_unix": start,
        "train_end_unix": max(ends) if ends else math.nan,
    }


def alone(runs: pd.DataFrame) -> pd.Series:
    """For each run of ``runs`` (a ``load_runs`` frame): ``""`` when its time was measured alone,
    else why not (no load record, the load, or the runs it overlapped)."""
    out = pd.Series("", index=runs.index, dtype=object)
    if runs.empty:
        return out
    for i, run in runs.iterrows():
        load, cores = run.get("load_1m"), run.get("cores")
        if not (isinstance(load, (int, float)) and math.isfinite(load)) or not (
            isinstance(cores, (int, float)) and math.isfinite(cores)
        ):
            out[i] = "no load record in its metrics.json history"
            continue
        if load > cores + LOAD_SLACK:
            out[i] = f"measured under load (mean 1-min load {load:.2f} > {int(cores)} cores + {LOAD_SLACK:g})"
            continue
        start, end = run.get("train_start_unix"), run.get("train_end_unix")
        if not (math.isfinite(start) and math.isfinite(end)):
            continue
        others = runs[
            (runs.index != i)
            & (runs["host"] == run.get("host"))
            & (runs["train_start_unix"] < end)
            & (runs["train_end_unix"] > start)
        ]
        if not others.empty:
            out[i] = f"trained side by side with {len(others)} other run(s) on {run.get('host')}: " + ", ".join(
                str(n) for n in others["name"].head(3)
            )
    return out


def time_refusal(metric: str, side_a: pd.DataFrame, side_b: pd.DataFrame, why: pd.Series) -> str:
    """Why a comparison of ``metric`` between these runs is not tested (``""``: it may be)."""
    if metric not in DEVICE_METRICS:
        return ""
    both = pd.concat([side_a, side_b])
    devices = set(both["device"]) if "device" in both.columns else {None}
    if None in devices or any(isinstance(d, float) for d in devices):
        return "not tested: the device is not recorded for every run (runs from before load recording)"
    if len(devices) > 1:
        return "not tested: runs on different devices (" + "; ".join(sorted(map(str, devices))) + ")"
    if metric in TIME_METRICS:
        bad = [(name, why.get(i, "")) for i, name in both["name"].items() if why.get(i, "")]
        if bad:
            return f"not tested: {len(bad)} of {len(both)} runs not measured alone ({bad[0][0]}: {bad[0][1]})"
    return ""


def figure_note(runs: pd.DataFrame, why: pd.Series) -> str:
    """The sentence a wall-clock figure carries about how its times were measured."""
    if runs.empty:
        return ""
    bad = int(sum(bool(why.get(i, "no load record")) for i in runs.index))
    devices = {d for d in runs.get("device", pd.Series(dtype=object)) if isinstance(d, str)}
    if len(devices) > 1:
        return f"runs on {len(devices)} kinds of device: times not comparable"
    where = f" on {next(iter(devices))}" if devices else ""
    if bad:
        return f"{bad} of {len(runs)} runs not measured alone{where}: times not comparable"
    return f"all runs measured alone{where}"
