"""Training-dynamics figures from the runs' ``dynamics.jsonl`` (``callbacks.dynamics``).

* ``dynamics_grad_norm_by_layer.png``: gradient norm of each block of the 6-layer ViT, pre-norm
  (Table 2 config 6) against post-norm (config 7), at the first logged step (the initial weights)
  and at the end of training (mean of the last few logged steps). Xiong et al. (2020), "On Layer
  Normalization in the Transformer Architecture": at initialisation post-norm's gradients are
  largest near the output and pre-norm's about flat in depth, which is why post-norm needs a
  learning-rate warm-up.
* ``dynamics_update_ratio.png``: ``||W_after - W_before|| / ||W_before||`` per optimizer step for
  the four optimizers (Table 2 configs 1-4, 2-layer pre-norm): the whole net over training, and
  per block at the end. SGD at lr 3e-4 moves its weights orders of magnitude less per step than
  Adam(W), whose step size is about lr per weight whatever the gradient's scale.

Figures are drawn for the configurations that have runs with a ``dynamics.jsonl``; the report's
section says which are missing. Runs of one configuration (seeds) are averaged.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import pandas as pd
from matplotlib.figure import Figure

from analysis.runs import completed
from analysis.study import OPTIMIZER_NAMES

FILE = "dynamics.jsonl"
LATE_RECORDS = 5  # "end of training": the mean of this many last logged steps
NORM_CONFIGS = {
    "table2/6": ("pre", {"task": "vit", "num_layers": 6, "norm": "pre", "optimizer": "adamw"}),
    "table2/7": ("post", {"task": "vit", "num_layers": 6, "norm": "post", "optimizer": "adamw"}),
}
OPTIMIZER_CONFIGS = {
    f"table2/{i}": (opt, {"task": "vit", "num_layers": 2, "norm": "pre", "optimizer": opt})
    for i, opt in enumerate(("adam", "adamw", "sgd", "momentum"), start=1)
}


@dataclass
class DynamicsReport:
    files: list[Path] = field(default_factory=list)
    markdown: str = ""
    summary: dict = field(default_factory=dict)


# -- reading --------------------------------------------------------------------------------------
def load_dynamics(run_dir: str | Path) -> pd.DataFrame:
    """A run's ``dynamics.jsonl`` in long format: ``step``, ``epoch``, ``metric``, ``block``, ``value``
    (a resumed run's repeated steps keep their last record; a torn last line is skipped)."""
    rows = []
    path = Path(run_dir) / FILE
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            for metric, blocks in record.items():
                if isinstance(blocks, dict):
                    rows += [(record["step"], record.get("epoch"), metric, b, v) for b, v in blocks.items()]
    frame = pd.DataFrame(rows, columns=["step", "epoch", "metric", "block", "value"])
    return frame.drop_duplicates(["step", "metric", "block"], keep="last").reset_index(drop=True)


def block_order(blocks) -> list[str]:
    """Input side first: embed/embedding, block<i>/layer<i> by i, then the rest (head, projection)."""

    def key(name: str):
        m = re.fullmatch(r"(block|layer)(\d+)", name)
        if name in ("embed", "embedding"):
            return (0, 0)
        return (1, int(m.group(2))) if m else (2, 0)

    return sorted((b for b in set(blocks) if b != "all"), key=key)


def _select(runs: pd.DataFrame, config: str, attrs: dict) -> list[str]:
    """Completed runs of ``config`` holding dynamics: by the preset's study_config, else (runs
    without one) by task, depth, norm and optimizer."""
    done = completed(runs)
    if done.empty:
        return []
    if "study_config" in done and (done["study_config"] == config).any():
        chosen = done[done["study_config"] == config]
    else:
        if any(k not in done for k in attrs):
            return []
        mask = done["study_config"].isna() if "study_config" in done else pd.Series(True, index=done.index)
        for k, v in attrs.items():
            mask &= done[k] == v
        chosen = done[mask]
    return [r for r in chosen["run"] if (Path(r) / FILE).is_file()]


def _mean_over_runs(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frame = pd.concat(frames, ignore_index=True)
    return frame.groupby(["step", "metric", "block"], as_index=False)["value"].mean()


def _series(frame: pd.DataFrame, metric: str, block: str) -> pd.Series:
    data = frame[(frame["metric"] == metric) & (frame["block"] == block)]
    return data.set_index("step")["value"].sort_index()


def early_late(frame: pd.DataFrame, metric: str, late_records: int = LATE_RECORDS) -> dict:
    """Per block: the value at the first logged step and the mean over the last ``late_records``."""
    data = frame[frame["metric"] == metric]
    steps = sorted(data["step"].unique())
    first, last = steps[0], steps[-late_records:]
    out = {"early_step": int(first), "late_steps": [int(last[0]), int(last[-1])], "early": {}, "late": {}}
    for block in block_order(data["block"]):
        values = _series(data, metric, block)
        out["early"][block] = float(values.get(first, float("nan")))
        out["late"][block] = float(values[values.index.isin(last)].mean())
    return out


def grad_norm_summary(frame: pd.DataFrame) -> dict:
    """Early and late gradient norm per block, and the ratio of the last to the first transformer
    block (or LSTM layer): > 1 means larger gradients near the output."""
    out = early_late(frame, "grad_norm")
    inner = [b for b in out["early"] if re.fullmatch(r"(block|layer)\d+", b)]
    for when in ("early", "late"):
        values = out[when]
        out[f"{when}_last_over_first"] = values[inner[-1]] / values[inner[0]] if inner and values[inner[0]] else None
    return out


# -- figures --------------------------------------------------------------------------------------
def plot_grad_norm_by_layer(frames: dict[str, pd.DataFrame]) -> Figure:
    """Two panels (first logged step | end of training): gradient norm against block, a line per
    configuration (label -> its averaged dynamics)."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    colors = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, frame) in enumerate(frames.items()):
        summary = grad_norm_summary(frame)
        for ax, when in zip(axes, ("early", "late")):
            blocks = list(summary[when])
            ax.plot(range(len(blocks)), list(summary[when].values()), "o-", color=colors[i % len(colors)], label=label)
            ax.set_xticks(range(len(blocks)), blocks, rotation=30)
        steps = summary["late_steps"]
        axes[0].set_title(f"first logged step (step {summary['early_step']}: initial weights)")
        axes[1].set_title(f"end of training (mean of steps {steps[0]}-{steps[1]})")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("block (input -> output)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("gradient L2 norm")
    fig.suptitle("Gradient norm by layer, 6-layer ViT, pre-norm vs post-norm (cf. Xiong et al., 2020)")
    return fig


def plot_update_ratio(frames: dict[str, pd.DataFrame]) -> Figure:
    """Left: the whole net's update-to-weight ratio per logged step, a line per optimizer; right:
    per block at the end of training."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, frame) in enumerate(frames.items()):
        color = colors[i % len(colors)]
        series = _series(frame, "update_ratio", "all")
        axes[0].plot(series.index, series.values, "-", marker="o", markersize=2, color=color, label=label)
        late = early_late(frame, "update_ratio")["late"]
        axes[1].plot(range(len(late)), list(late.values()), "o-", color=color, label=label)
        axes[1].set_xticks(range(len(late)), list(late), rotation=30)
    axes[0].set_xlabel("optimizer step")
    axes[0].set_title("whole net")
    axes[1].set_xlabel("block (input -> output)")
    axes[1].set_title(f"per block, end of training (mean of last {LATE_RECORDS} logged steps)")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylabel("||W_after - W_before|| / ||W_before||")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Update-to-weight ratio per step, 2-layer pre-norm ViT, four optimizers")
    return fig


# -- the report's section -------------------------------------------------------------------------
def _gather(runs: pd.DataFrame, configs: dict) -> tuple[dict[str, pd.DataFrame], list[str], dict[str, list[str]]]:
    frames, missing, used = {}, [], {}
    for config, (name, attrs) in configs.items():
        loaded = {r: load_dynamics(r) for r in _select(runs, config, attrs)}
        run_dirs = [r for r, frame in loaded.items() if not frame.empty]
        if not run_dirs:
            missing.append(config)
            continue
        label = f"{OPTIMIZER_NAMES.get(name, name + '-norm')} ({config}, n={len(run_dirs)})"
        frames[label] = _mean_over_runs([loaded[r] for r in run_dirs])
        used[label] = run_dirs
    return frames, missing, used


def _runs_used(used: dict[str, list[str]]) -> list[str]:
    return [
        "Runs: "
        + "; ".join(f"{label}: " + ", ".join(f"`{Path(r).name}`" for r in dirs) for label, dirs in used.items()),
        "",
    ]


def _fmt(v) -> str:
    return "" if v is None or math.isnan(v) else f"{v:.3g}"


def write_dynamics(runs: pd.DataFrame, out_dir: str | Path) -> DynamicsReport:
    """Draw the dynamics figures that have runs into ``out_dir``; returns the files and a Markdown
    section for the report's README (with the numbers behind the figures, or what is missing)."""
    out_dir = Path(out_dir)
    report = DynamicsReport()
    lines = [
        "## Training dynamics",
        "",
        (
            "From each run's `dynamics.jsonl` (`callbacks.dynamics`, every N optimizer steps); runs of one "
            "configuration are averaged (n)."
        ),
        "",
    ]

    frames, missing, used = _gather(runs, NORM_CONFIGS)
    if frames:
        path = out_dir / "dynamics_grad_norm_by_layer.png"
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_grad_norm_by_layer(frames).savefig(path, dpi=110)
        report.files.append(path)
        lines += [
            f"![gradient norm by layer]({path.name})",
            "",
            "| configuration | early step | last/first block, early | late steps | last/first block, late |",
            "| --- | --- | --- | --- | --- |",
        ]
        rows = []
        for label, frame in frames.items():
            s = grad_norm_summary(frame)
            report.summary[label] = s
            for when in ("early", "late"):
                steps = str(s["early_step"]) if when == "early" else "{}-{}".format(*s["late_steps"])
                rows.append(
                    {
                        "configuration": label,
                        "when": when,
                        "steps": steps,
                        **s[when],
                        "last/first": s[f"{when}_last_over_first"],
                    }
                )
            lines.append(
                f"| {label} | {s['early_step']} | {_fmt(s['early_last_over_first'])} | "
                f"{s['late_steps'][0]}-{s['late_steps'][1]} | {_fmt(s['late_last_over_first'])} |"
            )
        csv = out_dir / "dynamics_grad_norm_by_layer.csv"
        pd.DataFrame(rows).to_csv(csv, index=False)
        report.files.append(csv)
        lines += [
            "",
            (
                "last/first: gradient norm of the last transformer block over the first one's (above 1: "
                f"larger gradients near the output). Every block's value: `{csv.name}`."
            ),
            "",
        ]
        lines += _runs_used(used)
    if missing:
        lines += [
            (
                f"Gradient norm by layer: no run with dynamics for {', '.join(missing)} (Table 2 configs 6 "
                "and 7: `python train.py -m experiment=table2_6_adamw_6l,table2_7_adamw_6l_post`)."
            ),
            "",
        ]

    frames, missing, used = _gather(runs, OPTIMIZER_CONFIGS)
    if frames:
        path = out_dir / "dynamics_update_ratio.png"
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_update_ratio(frames).savefig(path, dpi=110)
        report.files.append(path)
        lines += [
            f"![update-to-weight ratio]({path.name})",
            "",
            "| optimizer | median update ratio (whole net, all logged steps) | end of training |",
            "| --- | --- | --- |",
        ]
        for label, frame in frames.items():
            series = _series(frame, "update_ratio", "all")
            late = series.iloc[-LATE_RECORDS:].mean()
            report.summary[label] = {"median_update_ratio": float(series.median()), "late_update_ratio": float(late)}
            lines.append(f"| {label} | {_fmt(series.median())} | {_fmt(late)} |")
        csv = out_dir / "dynamics_update_ratio.csv"
        pd.concat(
            [frame[frame["metric"] == "update_ratio"].assign(configuration=label) for label, frame in frames.items()]
        ).to_csv(csv, index=False)
        report.files.append(csv)
        lines += ["", f"Every logged step and block: `{csv.name}`.", ""] + _runs_used(used)
    if missing:
        lines += [
            (
                f"Update-to-weight ratio: no run with dynamics for {', '.join(missing)} "
                "(Table 2 configs 1-4: `python train.py -m experiment=table2_1_adam,table2_2_adamw,"
                "table2_3_sgd,table2_4_momentum`)."
            ),
            "",
        ]
    report.markdown = "\n".join(lines) + "\n"
    return report
