"""Optimizers at their best learning rate: the report's fair comparison of optimizers.

Runs that differ only in ``optimizer.lr`` (same ``family``, see ``analysis.runs.config_keys``) form
a learning-rate grid when they span at least two learning rates. For each grid, every learning
rate's configuration is summarised over its seeds on the run's monitored metric (``monitor.metric``
and ``monitor.mode`` of its config: final-epoch ``val/acc``, maximised, for the ViT; ``val/ppl``,
minimised, for the LSTM) and the best learning rate is the one with the best *mean over seeds*.
Grids that differ only in the optimizer (same ``lr_setting``: model, data, budget) are ranked
against each other at their best learning rates, each compared with the top one (Welch's t-test
over seeds, or the stated run-to-run spread with a single seed, as in ``analysis.findings``).

Nothing here knows the optimizers by name: any optimizer config (``conf/optimizer/<name>.yaml``)
with an ``lr`` appears under its Hydra choice name.

The best learning rate is picked on the same validation runs it is then reported with, so its
value is optimistic (no held-out selection); a best point at the edge of its grid is flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.findings import DEFAULT_SPREAD_REL, K_STATED, budget, seeds
from analysis.runs import completed
from analysis.stats import Summary, pooled_std, stated_spread, summarize, welch
from analysis.study import STUDY_LR

DEFAULT_MONITOR = {"vit": ("val/acc", "max"), "lstm": ("val/ppl", "min")}
NOT_REPORTED = ("completed", "duplicate")


@dataclass
class LrGrids:
    points: pd.DataFrame  # one row per (grid, learning rate): its summary over seeds
    best: pd.DataFrame  # one row per grid (optimizer and setting): its best learning rate, ranked


def _monitor(first: pd.Series) -> tuple[str, str]:
    metric, mode = first.get("monitor"), first.get("monitor_mode")
    if isinstance(metric, str) and mode in ("max", "min"):
        return metric, mode
    return DEFAULT_MONITOR.get(first.get("task"), ("val/loss", "min"))


def _model(first: pd.Series) -> str:
    layers = f"{int(first['num_layers'])}L" if pd.notna(first.get("num_layers")) else ""
    if first.get("task") == "vit":
        return f"ViT {first.get('norm')}-norm {layers}".strip()
    return f"{str(first.get('task')).upper()} {layers}".strip()


def _values(members: pd.DataFrame, metric: str) -> pd.Series:
    if metric not in members.columns:
        return pd.Series(dtype=float)
    return pd.to_numeric(members[metric], errors="coerce").dropna()


def lr_grids(runs: pd.DataFrame) -> LrGrids:
    """Every learning-rate grid among ``runs`` (a :func:`analysis.runs.load_runs` frame)."""
    done = completed(runs)
    points, best = [], []
    if done.empty or "family" not in done.columns:
        return LrGrids(pd.DataFrame(points), pd.DataFrame(best))
    for family, members in done.groupby("family", sort=False):
        lrs = pd.to_numeric(members["lr"], errors="coerce")
        if lrs.nunique() < 2:
            continue
        first = members.iloc[0]
        metric, mode = _monitor(first)
        grid = []
        for lr, at_lr in members.groupby(lrs):
            summary = summarize(_values(at_lr, metric))
            grid.append((float(lr), summary, at_lr))
            points.append(
                {
                    "task": first["task"],
                    "optimizer": first["optimizer_name"],
                    "model": _model(first),
                    "setting": budget(first, with_lr=False),
                    "lr": float(lr),
                    "metric": metric,
                    "mode": mode,
                    **summary.fields(),
                    "seeds": seeds(at_lr),
                    "runs": "; ".join(at_lr["run"]),
                    "family": family,
                    "lr_setting": first["lr_setting"],
                }
            )
        scored = [g for g in grid if g[1].n and math.isfinite(g[1].mean)]
        if not scored:
            continue
        pick = max if mode == "max" else min
        lr, summary, at_lr = pick(scored, key=lambda g: (g[1].mean, -g[0]) if mode == "max" else (g[1].mean, g[0]))
        grid_lrs = sorted(g[0] for g in grid)
        others = runs[(runs["family"] == family) & ~runs["status"].isin(NOT_REPORTED)]
        notes = []
        if lr == grid_lrs[0] or lr == grid_lrs[-1]:
            notes.append(f"best at the grid's {'lower' if lr == grid_lrs[0] else 'upper'} edge: extend the grid")
        if not others.empty:
            notes.append(
                "not completed: "
                + ", ".join(f"lr {o['lr']:g} {o['status']}" for _, o in others.sort_values("lr").iterrows())
            )
        study_lr = STUDY_LR.get(first["task"])
        at_study = next((g[1] for g in grid if study_lr and math.isclose(g[0], study_lr, rel_tol=1e-9)), None)
        best.append(
            {
                "task": first["task"],
                "model": _model(first),
                "setting": budget(first, with_lr=False),
                "optimizer": first["optimizer_name"],
                "metric": metric,
                "mode": mode,
                "best lr": lr,
                **summary.fields(),
                "seeds": seeds(at_lr),
                "study lr": study_lr,
                "mean at study lr": at_study.mean if at_study else np.nan,
                "n at study lr": at_study.n if at_study else 0,
                "grid": ", ".join(f"{x:g}" for x in grid_lrs),
                "runs per lr": ", ".join(str(g[1].n) for g in sorted(grid, key=lambda g: g[0])),
                "epochs": first.get("epochs"),
                "max_epochs": first.get("max_epochs"),
                "train_subset": first.get("train_subset"),
                "note": "; ".join(notes),
                "runs": "; ".join(at_lr["run"]),
                "family": family,
                "lr_setting": first["lr_setting"],
                "_summary": summary,
            }
        )
    best_frame = _rank(pd.DataFrame(best), done)
    return LrGrids(pd.DataFrame(points), best_frame)


def _rank(best: pd.DataFrame, done: pd.DataFrame) -> pd.DataFrame:
    """Rank the optimizers of each setting at their best lr and compare each with the top one."""
    if best.empty:
        return best
    frames = []
    for _, same in best.groupby("lr_setting", sort=False):
        mode = same.iloc[0]["mode"]
        same = same.sort_values("mean", ascending=(mode == "min")).reset_index(drop=True)
        same.insert(0, "rank", range(1, len(same) + 1))
        top: Summary = same.iloc[0]["_summary"]
        # run-to-run spread for single-seed sides: pooled over this setting's configurations with seeds
        metric = same.iloc[0]["metric"]
        in_setting = done[done["lr_setting"] == same.iloc[0]["lr_setting"]]
        sigma, pooled = pooled_std(summarize(_values(g, metric)) for _, g in in_setting.groupby("group"))
        rows = []
        for i, row in same.iterrows():
            s: Summary = row["_summary"]
            out = {
                "diff vs best": np.nan,
                "ci95 low vs best": np.nan,
                "ci95 high vs best": np.nan,
                "p vs best": np.nan,
                "vs best": "" if i else "best",
            }
            if i:
                if s.n >= 2 and top.n >= 2:
                    d = welch(s, top)
                    basis = "Welch"
                else:
                    spread = sigma if pooled else _default_spread(metric) * abs(top.mean)
                    d = stated_spread(s, top, spread, K_STATED)
                    basis = f"one run on a side: diff -+ {K_STATED:g} x {spread:.3g} x sqrt(1/nA+1/nB), " + (
                        "measured spread" if pooled else "assumed spread"
                    )
                worse = d.ci_high < 0 if mode == "max" else d.ci_low > 0
                out.update(
                    {
                        "diff vs best": d.diff,
                        "ci95 low vs best": d.ci_low,
                        "ci95 high vs best": d.ci_high,
                        "p vs best": d.p,
                        "vs best": ("worse" if worse else "not distinguishable") + f" ({basis})",
                    }
                )
            rows.append(out)
        frames.append(pd.concat([same, pd.DataFrame(rows)], axis=1))
    return pd.concat(frames, ignore_index=True).drop(columns="_summary")


def _default_spread(metric: str) -> float:
    return next((rel for suffix, rel in DEFAULT_SPREAD_REL.items() if metric.endswith(suffix)), 0.05)


def _fmt(x: float, digits: int = 4) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def to_markdown(grids: LrGrids) -> str:
    """One table per setting: the optimizers at their best learning rate, best first."""
    best = grids.best
    if best.empty:
        return (
            "_No learning-rate grid among these runs (runs of one configuration at two or more "
            'learning rates): see README, "A fair comparison of optimizers"._\n'
        )
    lines = []
    for _, same in best.groupby("lr_setting", sort=False):
        first = same.iloc[0]
        metric, digits = first["metric"], 2 if first["metric"].endswith("ppl") else 4
        lines += [
            f"### {first['model']}: {first['setting']}",
            "",
            f"Budget seen: {first['setting']} (trainer.max_epochs={first['max_epochs']}, "
            f"data.train_subset={first['train_subset'] if pd.notna(first['train_subset']) else 'null (all)'}). "
            f"Best learning rate by the mean over seeds of the final {metric} ({first['mode']}imised); "
            "picked on the runs it is reported with, so optimistic. Intervals: Welch 95% CI with >= 2 seeds "
            f"on both sides, else diff -+ {K_STATED:g} x the run-to-run spread (see Findings).",
            "",
            f"| Rank | Optimizer | Best lr | {metric} at best lr | vs the best: diff [interval] | "
            f"{metric} at the study's lr | Grid (lr: runs per lr) | Note |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for _, row in same.iterrows():
            value = _fmt(row["mean"], digits) + (
                f" ± {_fmt(row['std'], digits)} (n={row['n']})" if row["n"] > 1 else " (n=1)"
            )
            vs = (
                row["vs best"]
                if row["rank"] == 1
                else (
                    f"{row['diff vs best']:+.{digits}f} [{row['ci95 low vs best']:+.{digits}f}, "
                    f"{row['ci95 high vs best']:+.{digits}f}]: {row['vs best']}"
                )
            )
            at_study = (
                f"{_fmt(row['mean at study lr'], digits)} (lr {row['study lr']:g}, n={row['n at study lr']})"
                if row["n at study lr"]
                else "not in the grid"
            )
            grid = ", ".join(f"{lr}: {n}" for lr, n in zip(row["grid"].split(", "), row["runs per lr"].split(", ")))
            lines.append(
                f"| {row['rank']} | {row['optimizer']} | {row['best lr']:g} | {value} | {vs} | {at_study} "
                f"| {grid} | {row['note']} |"
            )
        lines.append("")
    return "\n".join(lines)
