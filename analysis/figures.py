"""The study's Figures 1-6: train (solid) and validation (dashed) loss and perplexity (LSTM) or
accuracy (ViT), against epochs or against wall-clock seconds, one colour per configuration."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from analysis.runs import completed
from analysis.study import FIGURES

METRIC = {"vit": ("acc", "accuracy"), "lstm": ("ppl", "perplexity")}
X_AXIS = {"epoch": ("epoch", "epoch"), "wall": ("time/train_s", "wall-clock training time (s)")}


def plot_curves(runs: pd.DataFrame, curves: pd.DataFrame, task: str, x: str, title: str):
    """One figure, two panels (loss; accuracy or perplexity); a line per run in ``runs``."""
    metric, metric_name = METRIC[task]
    x_col, x_label = X_AXIS[x]
    # matplotlib's object API, not pyplot: no global backend or figure registry involved, so
    # this works headless and in notebooks alike (the caller saves or displays the figure)
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (_, run) in enumerate(runs.iterrows()):
        data = curves[curves["run"] == run["run"]].sort_values("epoch")
        color = colors[i % len(colors)]
        for ax, name in zip(axes, ("loss", metric)):
            for stage, style in (("train", "-"), ("val", "--")):
                tag = f"{stage}/{name}"
                if tag in data.columns and x_col in data.columns:
                    points = data[[x_col, tag]].dropna()
                    ax.plot(points[x_col], points[tag], style, color=color, marker="o", markersize=3,
                            label=run["label"] if stage == "train" else None)
    for ax, name in zip(axes, ("loss", metric_name)):
        ax.set_xlabel(x_label)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if metric == "ppl" and name == metric_name:
            ax.set_yscale("log")
    handles, _ = axes[1].get_legend_handles_labels()
    handles += [Line2D([], [], color="black", linestyle="-", label="train"),
                Line2D([], [], color="black", linestyle="--", label="validation")]
    axes[1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(title)
    return fig


def figure_specs(runs: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame, str, str]]:
    """(file stem, task, runs, x axis, title) for the study's figures that have runs, then one
    pair of figures (epochs, wall-clock) per task over all its completed runs."""
    done = completed(runs)
    specs = []
    for stem, task, configs, x, title in FIGURES:
        chosen = done[(done["task"] == task) & done["study_config"].isin(configs)]
        if not chosen.empty:
            axis = "epochs" if x == "epoch" else "wall-clock"
            specs.append((stem, task, chosen, x, f"Figure {stem.removeprefix('figure')}: {title}, vs {axis}"))
    for task in ("lstm", "vit"):
        chosen = done[done["task"] == task]
        if not chosen.empty:
            specs.append((f"{task}_all_epochs", task, chosen, "epoch", f"{task}: all runs, vs epochs"))
            specs.append((f"{task}_all_wallclock", task, chosen, "wall", f"{task}: all runs, vs wall-clock"))
    return specs


def make_figures(runs: pd.DataFrame, curves: pd.DataFrame) -> dict[str, Figure]:
    """Every figure :func:`figure_specs` lists, by file stem (e.g. ``figure3``)."""
    return {stem: plot_curves(chosen, curves, task, x, title)
            for stem, task, chosen, x, title in figure_specs(runs)}


def save_figures(figures: dict[str, Figure], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in figures.items():
        path = out_dir / f"{stem}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths
