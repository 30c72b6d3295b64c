"""The study's Figures 1-6: train (solid) and validation (dashed) loss and perplexity (LSTM) or
accuracy (ViT), against epochs or against wall-clock seconds, one colour per configuration.

A configuration with several runs (seeds) is drawn as its mean curve with a shaded band of
± 1 sample standard deviation over the seeds at each epoch (against wall-clock time, x is the
mean cumulative training time of that epoch); one run is drawn as its own curve, as before."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from analysis.runs import completed
from analysis.study import FIGURES
from analysis.timing import alone, figure_note

METRIC = {"vit": ("acc", "accuracy"), "lstm": ("ppl", "perplexity")}
BAND = "band: ± 1 std over seeds"
X_AXIS = {"epoch": ("epoch", "epoch"), "wall": ("time/train_s", "wall-clock training time (s)")}


def plot_curves(runs: pd.DataFrame, curves: pd.DataFrame, task: str, x: str, title: str):
    """One figure, two panels (loss; accuracy or perplexity); a line per configuration (``group``) in
    ``runs``: the mean over its runs with a ± 1 std band when it has several."""
    metric, metric_name = METRIC[task]
    x_col, x_label = X_AXIS[x]
    # matplotlib's object API, not pyplot: no global backend or figure registry involved, so
    # this works headless and in notebooks alike (the caller saves or displays the figure)
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = runs["group"] if "group" in runs.columns else runs["run"]
    any_band = False
    for i, group in enumerate(dict.fromkeys(groups)):
        members = runs[groups == group]
        data = curves[curves["run"].isin(members["run"])]
        n = data["run"].nunique()
        color = colors[i % len(colors)]
        label = members.iloc[0]["label"] + (f" (n={n})" if n > 1 else "")
        for ax, name in zip(axes, ("loss", metric)):
            for stage, style in (("train", "-"), ("val", "--")):
                tag = f"{stage}/{name}"
                if tag not in data.columns or x_col not in data.columns:
                    continue
                mean, std = _mean_curve(data, x_col, tag)
                if mean.empty:
                    continue
                ax.plot(
                    mean[x_col],
                    mean[tag],
                    style,
                    color=color,
                    marker="o",
                    markersize=3,
                    label=label if stage == "train" else None,
                )
                if n > 1 and std.notna().any():
                    any_band = True
                    ax.fill_between(mean[x_col], mean[tag] - std, mean[tag] + std, color=color, alpha=0.15, linewidth=0)
    for ax, name in zip(axes, ("loss", metric_name)):
        ax.set_xlabel(x_label)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if metric == "ppl" and name == metric_name:
            ax.set_yscale("log")
    handles, _ = axes[1].get_legend_handles_labels()
    handles += [
        Line2D([], [], color="black", linestyle="-", label="train"),
        Line2D([], [], color="black", linestyle="--", label="validation"),
    ]
    axes[1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(f"{title} ({BAND})" if any_band else title)
    return fig


def _mean_curve(data: pd.DataFrame, x_col: str, tag: str) -> tuple[pd.DataFrame, pd.Series]:
    """Per epoch over the runs in ``data``: the mean of ``x_col`` and ``tag`` and the sample std
    of ``tag`` (NaN where fewer than two runs reached that epoch)."""
    points = data[["run", "epoch", x_col, tag]].dropna() if x_col != "epoch" else data[["run", "epoch", tag]].dropna()
    by_epoch = points.groupby("epoch")
    mean = by_epoch.mean(numeric_only=True).reset_index().sort_values("epoch")
    std = by_epoch[tag].std(ddof=1).reindex(mean["epoch"]).reset_index(drop=True)
    return mean.reset_index(drop=True), std


def figure_specs(runs: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame, str, str]]:
    """(file stem, task, runs, x axis, title) for the study's figures that have runs, then one
    pair of figures (epochs, wall-clock) per task over all its completed runs. A figure shows one
    budget (``conf/budget/``), named in its title; with runs of several budgets each figure is
    drawn once per budget, its stem ending in ``_<budget>``."""
    done = completed(runs)
    why = (
        alone(runs).reindex(done.index) if "load_1m" in runs.columns else pd.Series("no load record", index=done.index)
    )

    def wall(title: str, chosen: pd.DataFrame) -> str:  # a wall-clock figure says how its times were measured
        return f"{title}\n({figure_note(chosen, why)})"

    budgets = done["budget"].fillna("full") if "budget" in done.columns else pd.Series("full", index=done.index)
    several = budgets.nunique() > 1
    specs = []
    for budget in sorted(budgets.unique()):
        of_budget = done[budgets == budget]
        suffix = f"_{budget}" if several else ""
        for stem, task, configs, x, title in FIGURES:
            chosen = of_budget[(of_budget["task"] == task) & of_budget["study_config"].isin(configs)]
            if not chosen.empty:
                axis = "epochs" if x == "epoch" else "wall-clock"
                name = f"Figure {stem.removeprefix('figure')}: {title}, vs {axis}, budget {budget}"
                specs.append((stem + suffix, task, chosen, x, wall(name, chosen) if x == "wall" else name))
        for task in ("lstm", "vit"):
            chosen = of_budget[of_budget["task"] == task]
            if not chosen.empty:
                for stem, x, axis in (("epochs", "epoch", "epochs"), ("wallclock", "wall", "wall-clock")):
                    title = f"{task}: all runs, vs {axis}, budget {budget}"
                    specs.append(
                        (f"{task}_all_{stem}{suffix}", task, chosen, x, wall(title, chosen) if x == "wall" else title)
                    )
    return specs


def make_figures(runs: pd.DataFrame, curves: pd.DataFrame) -> dict[str, Figure]:
    """Every figure :func:`figure_specs` lists, by file stem (e.g. ``figure3``)."""
    return {stem: plot_curves(chosen, curves, task, x, title) for stem, task, chosen, x, title in figure_specs(runs)}


def save_figures(figures: dict[str, Figure], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in figures.items():
        path = out_dir / f"{stem}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths
