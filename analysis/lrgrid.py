"""Optimizers at their best learning rate: the report's fair comparison of optimizers (after the
Deep Learning Tuning Playbook; rules with a worked example in ``docs/findings.md``).

Runs that differ only in ``optimizer.lr`` (same ``family``, see ``analysis.runs.config_keys``) form
a learning-rate grid when they span at least two learning rates; runs that diverged or failed are
part of the grid (:data:`FAILED`), counted as failures. For each grid:

* **choice on validation**: each learning rate's completed seeds are summarised on the run's
  monitored metric (``monitor.metric``/``monitor.mode``: final ``val/acc``, maximised, for the
  ViT; ``val/ppl``, minimised, for the LSTM); the best learning rate has the fewest failures (as a
  fraction of its runs) and, among those, the best mean over seeds;
* **result on test**: the chosen learning rate is reported on the test split (``test/acc``,
  ``test/ppl``: the same metric, of the runs' best checkpoint) with its 95% interval; where the runs
  hold no test numbers the validation number stands in, marked optimistic;
* **failures** are shown as ``k of n`` seeds per learning rate;
* **the grid's edge**: a best lr at the smallest or largest lr of the grid is flagged (extend the
  grid), and the failures of its neighbours are counted (a best lr next to a diverged one sits at
  the edge of stability).

Grids that differ only in the optimizer (same ``lr_setting``: model, data, budget) are ranked by
their reported number and each compared with the top one, with the test of ``analysis.stats.compare``
(paired t over shared seeds, Welch, or not tested with a single run), Holm-adjusted over the
section's comparisons. Nothing here knows the optimizers by name: any optimizer config
(``conf/optimizer/<name>.yaml``) with an ``lr`` appears under its Hydra choice name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.findings import ALPHA, DEFAULT_BUDGET, describe_setting, seeds
from analysis.stats import compare_metric, holm, on_log_scale, summarize
from analysis.study import STUDY_LR
from lmvit.runs import FAILED, FINISHED

DEFAULT_MONITOR = {"vit": ("val/acc", "max"), "lstm": ("val/ppl", "min")}
IN_GRID = (*FINISHED, *FAILED)  # FAILED: runs of a grid point that count as failures


@dataclass
class LrGrids:
    points: pd.DataFrame  # one row per (grid, learning rate): its summary over seeds
    best: pd.DataFrame  # one row per grid (optimizer and setting): its best learning rate, ranked


def _monitor(first: pd.Series) -> tuple[str, str]:
    metric, mode = first.get("monitor"), first.get("monitor_mode")
    if isinstance(metric, str) and mode in ("max", "min"):
        return metric, mode
    return DEFAULT_MONITOR.get(first.get("task"), ("val/loss", "min"))


def test_metric(metric: str) -> str:
    """The test split's name of a validation metric: ``val/acc`` -> ``test/acc``."""
    return "test/" + metric.split("/", 1)[-1]


def _model(first: pd.Series) -> str:
    layers = f"{int(first['num_layers'])}L" if pd.notna(first.get("num_layers")) else ""
    if first.get("task") == "vit":
        return f"ViT {first.get('norm')}-norm {layers}".strip()
    return f"{str(first.get('task')).upper()} {layers}".strip()


def _by_seed(members: pd.DataFrame, metric: str) -> dict:
    if metric not in members.columns:
        return {}
    out = {}
    for _, r in members.iterrows():
        v = pd.to_numeric(pd.Series([r[metric]]), errors="coerce").iloc[0]
        if pd.notna(v) and math.isfinite(v):
            out[int(r["seed"]) if pd.notna(r.get("seed")) else r["run"]] = float(v)
    return out


def _failures(at_lr: pd.DataFrame) -> tuple[int, int]:
    """(failed runs, runs) at one learning rate: ``k of n``."""
    return int(at_lr["status"].isin(FAILED).sum()), len(at_lr)


def lr_grids(runs: pd.DataFrame) -> LrGrids:
    """Every learning-rate grid among ``runs`` (a :func:`analysis.runs.load_runs` frame)."""
    points, best = [], []
    if runs.empty or "family" not in runs.columns:
        return LrGrids(pd.DataFrame(points), pd.DataFrame(best))
    pool = runs[runs["status"].isin(IN_GRID)]
    for family, members in pool.groupby("family", sort=False):
        lrs = pd.to_numeric(members["lr"], errors="coerce")
        if lrs.nunique() < 2:
            continue
        done = members[members["status"] == "completed"]
        first = (done if not done.empty else members).iloc[0]
        metric, mode = _monitor(first)
        grid = []
        for lr, at_lr in members.groupby(lrs):
            ok = at_lr[at_lr["status"] == "completed"]
            val, test = _by_seed(ok, metric), _by_seed(ok, test_metric(metric))
            failed, total = _failures(at_lr)
            grid.append(
                {"lr": float(lr), "val": val, "test": test, "failed": failed, "total": total, "ok": ok, "at_lr": at_lr}
            )
            points.append(
                {
                    "task": first["task"],
                    "budget": first.get("budget", DEFAULT_BUDGET),
                    "optimizer": first["optimizer_name"],
                    "model": _model(first),
                    "setting": describe_setting(first, with_lr=False),
                    "lr": float(lr),
                    "metric": metric,
                    "mode": mode,
                    **summarize(val.values()).fields(),
                    "test mean": summarize(test.values()).mean,
                    "failed": failed,
                    "runs": total,
                    "failures": f"{failed} of {total}",
                    "seeds": seeds(at_lr),
                    "run dirs": "; ".join(at_lr["run"]),
                    "family": family,
                    "lr_setting": first["lr_setting"],
                }
            )
        grid.sort(key=lambda g: g["lr"])
        scored = [g for g in grid if g["val"]]
        if not scored:
            continue
        sign = -1.0 if mode == "max" else 1.0  # smaller key is better
        pick = min(
            scored, key=lambda g: (g["failed"] / g["total"], sign * float(np.mean(list(g["val"].values()))), g["lr"])
        )
        i = grid.index(pick)
        notes = []
        if i in (0, len(grid) - 1):
            notes.append(f"best at the grid's {'lower' if i == 0 else 'upper'} edge: extend the grid")
        for j, side in ((i - 1, "lower"), (i + 1, "upper")):
            if 0 <= j < len(grid) and grid[j]["failed"]:
                g = grid[j]
                notes.append(f"{side} neighbour lr {g['lr']:g}: {g['failed']} of {g['total']} runs diverged/failed")
        others = runs[(runs["family"] == family) & ~runs["status"].isin((*IN_GRID, "duplicate"))]
        if not others.empty:
            notes.append(
                "not in the grid: "
                + ", ".join(f"lr {o['lr']:g} {o['status']}" for _, o in others.sort_values("lr").iterrows())
            )
        on_test = bool(pick["test"])
        reported = pick["test"] if on_test else pick["val"]
        if not on_test:
            notes.append(f"no {test_metric(metric)} in the runs: {metric} shown (chosen on it too: optimistic)")
        val_s, rep_s = summarize(pick["val"].values()), summarize(reported.values())
        study_lr = STUDY_LR.get(first["task"])
        at_study = next((g for g in grid if study_lr and math.isclose(g["lr"], study_lr, rel_tol=1e-9)), None)
        best.append(
            {
                "task": first["task"],
                "budget": first.get("budget", DEFAULT_BUDGET),
                "model": _model(first),
                "setting": describe_setting(first, with_lr=False),
                "optimizer": first["optimizer_name"],
                "metric": metric,
                "mode": mode,
                "best lr": pick["lr"],
                "val mean": val_s.mean,
                "reported metric": test_metric(metric) if on_test else metric,
                **rep_s.fields(),
                "failures at best lr": f"{pick['failed']} of {pick['total']}",
                "seeds": seeds(pick["ok"]),
                "study lr": study_lr,
                "mean at study lr": float(np.mean(list(at_study[("test" if on_test else "val")].values())))
                if at_study and at_study["test" if on_test else "val"]
                else np.nan,
                "n at study lr": len(at_study["test" if on_test else "val"]) if at_study else 0,
                "grid": ", ".join(f"{g['lr']:g}" for g in grid),
                "failures per lr": ", ".join(f"{g['failed']} of {g['total']}" for g in grid),
                "epochs": first.get("epochs"),
                "max_epochs": first.get("max_epochs"),
                "train_subset": first.get("train_subset"),
                "note": "; ".join(notes),
                "runs": "; ".join(pick["ok"]["run"]),
                "family": family,
                "lr_setting": first["lr_setting"],
                "_values": reported,
                "_summary": rep_s,
            }
        )
    return LrGrids(pd.DataFrame(points), _rank(pd.DataFrame(best)))


def _rank(best: pd.DataFrame) -> pd.DataFrame:
    """Rank the optimizers of each setting by their reported number and compare each with the top
    one (``analysis.stats.compare``), Holm-adjusted over all these comparisons."""
    if best.empty:
        return best
    frames = []
    for _, same in best.groupby("lr_setting", sort=False):
        mode = same.iloc[0]["mode"]
        same = same.sort_values("mean", ascending=(mode == "min")).reset_index(drop=True)
        same.insert(0, "rank", range(1, len(same) + 1))
        top = same.iloc[0]["_values"]
        rows = []
        for i, row in same.iterrows():
            out = {"diff vs best": np.nan, "ci95 low vs best": np.nan, "ci95 high vs best": np.nan}
            out.update({"method vs best": "", "p vs best": np.nan, "vs best": "" if i else "best"})
            if i:
                sides = compare_metric(row["reported metric"], row["_values"], top)  # ppl: on the logs
                d = sides.difference
                if d is None:
                    out["vs best"] = sides.reason
                else:
                    out.update(
                        {
                            "diff vs best": d.diff,
                            "ci95 low vs best": d.ci_low,
                            "ci95 high vs best": d.ci_high,
                            "method vs best": d.method,
                            "p vs best": d.p,
                            "_worse": d.diff < 0 if mode == "max" else d.diff > 0,
                        }
                    )
            rows.append(out)
        frames.append(pd.concat([same, pd.DataFrame(rows)], axis=1))
    ranked = pd.concat(frames, ignore_index=True)
    ranked["p adjusted vs best"] = holm(ranked["p vs best"])
    for i, row in ranked.iterrows():
        if pd.notna(row["p adjusted vs best"]):
            significant = row["p adjusted vs best"] < ALPHA
            ranked.at[i, "vs best"] = (
                ("worse" if row["_worse"] else "better") if significant else "not distinguishable"
            ) + f" ({row['method vs best']}, Holm-adjusted p {row['p adjusted vs best']:.3g})"
    return ranked.drop(columns=[c for c in ("_summary", "_values", "_worse") if c in ranked.columns])


def _fmt(x: float, digits: int = 4) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def to_markdown(grids: LrGrids) -> str:
    """One table per setting: the optimizers at their best learning rate, best first."""
    best = grids.best
    if best.empty:
        return (
            "_No learning-rate grid among these runs (runs of one configuration at two or more "
            'learning rates): see docs/findings.md, "A fair learning-rate comparison"._\n'
        )
    lines = []
    for _, same in best.groupby("lr_setting", sort=False):
        first = same.iloc[0]
        metric, digits = first["metric"], 2 if first["metric"].endswith("ppl") else 4
        lines += [
            f"### {first['model']}: {first['setting']} [budget {first['budget']}]",
            "",
            f"Budget seen: {first['setting']} (trainer.max_epochs={first['max_epochs']}, "
            f"data.train_subset={first['train_subset'] if pd.notna(first['train_subset']) else 'null (all)'}). "
            f"Learning rate chosen on the final {metric} ({first['mode']}imised): fewest diverged/failed "
            "runs, then the best mean over seeds; reported on test with its 95% interval. vs the best: "
            "paired t over shared seeds, else Welch, else not tested (n=1); Holm-adjusted p.",
            "",
            "| Rank | Optimizer | Best lr | Reported at best lr [95% CI] | Failures at best lr | "
            f"{metric} at best lr | vs the best: {'ratio' if on_log_scale(metric) else 'diff'} [95% CI] | "
            "at the study's lr | "
            "Grid: lr (failed of runs) | Note |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for _, row in same.iterrows():
            value = f"{row['reported metric']} {_fmt(row['mean'], digits)}" + (
                f" [{_fmt(row['ci95 low'], digits)}, {_fmt(row['ci95 high'], digits)}] (n={row['n']})"
                if row["n"] > 1
                else " (n=1)"
            )
            vs = (
                row["vs best"]
                if row["rank"] == 1 or pd.isna(row["diff vs best"])
                else (
                    f"ratio {math.exp(row['diff vs best']):.4g} [{math.exp(row['ci95 low vs best']):.4g}, "
                    f"{math.exp(row['ci95 high vs best']):.4g}]: {row['vs best']}"
                    if on_log_scale(row["reported metric"])
                    else f"{row['diff vs best']:+.{digits}f} [{row['ci95 low vs best']:+.{digits}f}, "
                    f"{row['ci95 high vs best']:+.{digits}f}]: {row['vs best']}"
                )
            )
            at_study = (
                f"{_fmt(row['mean at study lr'], digits)} (lr {row['study lr']:g}, n={row['n at study lr']})"
                if row["n at study lr"]
                else "not in the grid"
            )
            grid = ", ".join(
                f"{lr} ({k})" for lr, k in zip(row["grid"].split(", "), row["failures per lr"].split(", "))
            )
            lines.append(
                f"| {row['rank']} | {row['optimizer']} | {row['best lr']:g} | {value} | {row['failures at best lr']} "
                f"| {_fmt(row['val mean'], digits)} | {vs} | {at_study} | {grid} | {row['note']} |"
            )
        lines.append("")
    return "\n".join(lines)
