"""Training-dynamics figures from the runs' ``dynamics.jsonl`` (``callbacks.dynamics``).

* ``dynamics_grad_norm_by_layer.png``: pre-norm (Table 2 config 6) against post-norm (config 7),
  measured as Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture", do:
  the gradient norm of each block's FFN second weight matrix (the MLP's output Linear) against the
  block's index, at initialisation (the mean over the ``init_batches`` batches the callback
  measures before the first step) and late in training (the mean of the last
  :data:`LATE_RECORDS` logged steps); per configuration the geometric mean over seeds with its
  Student-t 95% seed interval as a band. The paper: post-norm's gradients grow with depth toward
  the output, pre-norm's are about flat (:func:`xiong_verdict` says whether the runs show it).
* ``dynamics_update_ratio.png``: ``||W_after - W_before|| / ||W_before||`` per optimizer step for
  the four optimizers (Table 2 configs 1-4, 2-layer pre-norm): the whole net over training, and
  per block at the end.

Only runs of one full configuration are averaged (the report's ``group``: every setting but the
seed, learning rate and budget included), so ``n`` counts seeds; runs of one study row that differ
in anything else are separate lines.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats as st

from analysis.runs import completed
from analysis.study import OPTIMIZER_NAMES

FILE = "dynamics.jsonl"
LATE_RECORDS = 5  # "late in training": the mean of this many last logged steps
LEVEL = 0.95  # seed intervals: Student-t, n - 1 degrees of freedom
# pre-norm counts as "about flat or decreasing" while its slope's interval stays below this: a
# growth of at most 5% per layer (about 1.3x over six layers)
FLAT_SLOPE = math.log(1.05)
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
def _records(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / FILE
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line (a killed run)
                continue
    return out


def load_dynamics(run_dir: str | Path) -> pd.DataFrame:
    """A run's logged steps in long format: ``step``, ``epoch``, ``metric``, ``block``, ``value``
    (a resumed run's repeated steps keep their last record; the measurement at initialisation is
    :func:`load_init`'s)."""
    rows = []
    for record in _records(run_dir):
        if record.get("phase") == "init":
            continue
        for metric, blocks in record.items():
            if isinstance(blocks, dict):
                rows += [(record["step"], record.get("epoch"), metric, b, v) for b, v in blocks.items()]
    frame = pd.DataFrame(rows, columns=["step", "epoch", "metric", "block", "value"])
    return frame.drop_duplicates(["step", "metric", "block"], keep="last").reset_index(drop=True)


def load_init(run_dir: str | Path) -> pd.DataFrame:
    """A run's measurement at initialisation: ``batch``, ``metric``, ``block``, ``value``."""
    rows = []
    for record in _records(run_dir):
        if record.get("phase") == "init":
            for metric, blocks in record.items():
                if isinstance(blocks, dict):
                    rows += [(record["batch"], metric, b, v) for b, v in blocks.items()]
    frame = pd.DataFrame(rows, columns=["batch", "metric", "block", "value"])
    return frame.drop_duplicates(["batch", "metric", "block"], keep="last").reset_index(drop=True)


def block_order(blocks) -> list[str]:
    """Input side first: embed/embedding, block<i>/layer<i> by i, then the rest (head, projection)."""

    def key(name: str):
        m = re.fullmatch(r"(block|layer)(\d+)", name)
        if name in ("embed", "embedding"):
            return (0, 0)
        return (1, int(m.group(2))) if m else (2, 0)

    return sorted((b for b in set(blocks) if b != "all"), key=key)


def _select(runs: pd.DataFrame, config: str, attrs: dict) -> pd.DataFrame:
    """Completed runs of ``config`` holding dynamics: by study_config, else (runs without one) by
    task, depth, norm and optimizer."""
    done = completed(runs)
    if done.empty:
        return done
    if "study_config" in done and (done["study_config"] == config).any():
        chosen = done[done["study_config"] == config]
    else:
        if any(k not in done for k in attrs):
            return done.iloc[0:0]
        mask = done["study_config"].isna() if "study_config" in done else pd.Series(True, index=done.index)
        for k, v in attrs.items():
            mask &= done[k] == v
        chosen = done[mask]
    return chosen[[(Path(r) / FILE).is_file() for r in chosen["run"]]]


def configurations(runs: pd.DataFrame, config: str, attrs: dict) -> list[pd.DataFrame]:
    """The runs of ``config`` with dynamics, one DataFrame per full configuration (``group``: its
    seeds), in the order of their labels."""
    chosen = _select(runs, config, attrs)
    if chosen.empty:
        return []
    key = "group" if "group" in chosen.columns else "run"
    return [chosen[chosen[key] == g] for g in chosen.sort_values("label")[key].unique()]


def one_configuration(members: pd.DataFrame) -> None:
    """Refuse to average runs of several configurations (seeds only: same ``group``)."""
    if "group" in members.columns and members["group"].nunique() > 1:
        differ = ", ".join(sorted(map(str, members["label"].unique())))
        raise ValueError(
            f"runs of {members['group'].nunique()} configurations ({differ}) cannot be averaged as seeds: "
            "average runs of one configuration (same lr, optimizer, depth, norm, budget, epochs, ...) only"
        )


def _mean_over_runs(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frame = pd.concat(frames, ignore_index=True)
    return frame.groupby(["step", "metric", "block"], as_index=False)["value"].mean()


def mean_over_seeds(members: pd.DataFrame) -> pd.DataFrame:
    """The logged steps averaged over the seeds of one configuration (refused for several)."""
    one_configuration(members)
    return _mean_over_runs([load_dynamics(r) for r in members["run"]])


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


# -- Xiong et al.'s measurement: FFN second weight, per layer, over seeds -------------------------
def ffn_per_layer(run_dir: str | Path, when: str, late_records: int = LATE_RECORDS) -> dict[str, float]:
    """One run's FFN second-weight gradient norm per block: ``init`` = the mean over the batches
    measured at initialisation, ``late`` = the mean over the last ``late_records`` logged steps."""
    if when == "init":
        data = load_init(run_dir)
        data = data[data["metric"] == "ffn_grad_norm"]
        return {b: float(data[data["block"] == b]["value"].mean()) for b in block_order(data["block"])}
    data = load_dynamics(run_dir)
    data = data[data["metric"] == "ffn_grad_norm"]
    last = sorted(data["step"].unique())[-late_records:]
    data = data[data["step"].isin(last)]
    return {b: float(data[data["block"] == b]["value"].mean()) for b in block_order(data["block"])}


def log_slope(per_layer: dict[str, float]) -> float:
    """Least-squares slope of ln(gradient norm) against the block's index (per layer: a slope s
    means a factor e^s from one block to the next)."""
    index = [int(re.sub(r"\D", "", b)) for b in per_layer]
    if len(index) < 2:
        return math.nan
    return float(np.polyfit(index, np.log(list(per_layer.values())), 1)[0])


@dataclass(frozen=True)
class SeedInterval:
    n: int
    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.3f} (n={self.n}, no interval)"
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}] (n={self.n})"


def seed_interval(values, level: float = LEVEL) -> SeedInterval:
    """Mean over seeds with its Student-t interval (n - 1 degrees of freedom; NaN for one seed)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return SeedInterval(0, math.nan, math.nan, math.nan)
    if x.size < 2:
        return SeedInterval(1, float(x[0]), math.nan, math.nan)
    half = st.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return SeedInterval(int(x.size), float(x.mean()), float(x.mean() - half), float(x.mean() + half))


def ffn_profile(members: pd.DataFrame, when: str) -> dict:
    """One configuration's seeds: per block the geometric mean of the FFN gradient norm with its
    seed interval (on the log scale), and the slope of ln(norm) per layer with its seed interval."""
    one_configuration(members)
    per_seed = [ffn_per_layer(r, when) for r in members["run"]]
    per_seed = [p for p in per_seed if p]
    blocks = block_order({b for p in per_seed for b in p})
    layers = {}
    for b in blocks:
        s = seed_interval([math.log(p[b]) for p in per_seed if b in p and p[b] > 0])
        layers[b] = (math.exp(s.mean), math.exp(s.low), math.exp(s.high)) if s.n else (math.nan,) * 3
    return {"n": len(per_seed), "layers": layers, "slope": seed_interval([log_slope(p) for p in per_seed])}


def xiong_verdict(pre: SeedInterval, post: SeedInterval) -> str:
    """``appears`` (post-norm's slope interval above 0 and pre-norm's below :data:`FLAT_SLOPE`),
    ``does not appear`` (post-norm's interval at or below 0, or pre-norm's above the flat bound),
    ``unclear`` (intervals across those bounds) or ``not tested`` (a side without two seeds)."""
    if pre.n < 2 or post.n < 2:
        return "not tested"
    if post.low > 0 and pre.high < FLAT_SLOPE:
        return "appears"
    if post.high <= 0 or pre.low >= FLAT_SLOPE:
        return "does not appear"
    return "unclear"


def xiong_sentence(pre: SeedInterval, post: SeedInterval, when: str = "at initialisation") -> str:
    """One sentence, computed from the slopes, on whether Xiong et al.'s pattern appears."""
    verdict = xiong_verdict(pre, post)
    numbers = f"slope of ln(FFN second-weight gradient norm) per layer, post-norm {post}, pre-norm {pre}" + (
        "" if verdict == "not tested" else f", {int(LEVEL * 100)}% seed intervals"
    )
    if verdict == "not tested":
        short = [name for name, s in (("pre-norm", pre), ("post-norm", post)) if s.n < 2]
        return (
            f"Xiong et al.'s pattern {when} is not tested: {' and '.join(short)} "
            f"{'has' if len(short) == 1 else 'have'} fewer than two seeds ({numbers})."
        )
    flat = f"pre-norm flat or decreasing (below +{FLAT_SLOPE:.3f}, 5% per layer)"
    pattern = f"post-norm's gradients growing toward the output, {flat}"
    if verdict == "appears":
        return f"Xiong et al.'s pattern ({pattern}) appears {when}: {numbers}."
    if verdict == "does not appear":
        return f"Xiong et al.'s pattern ({pattern}) does not appear {when}: {numbers}."
    unclear = "is unclear (an interval crosses its bound)"
    return f"Whether Xiong et al.'s pattern ({pattern}) appears {when} {unclear}: {numbers}."


# -- figures --------------------------------------------------------------------------------------
WHEN = {"init": "at initialisation", "late": "late in training"}


def plot_grad_norm_by_layer(profiles: dict[str, dict[str, dict]]) -> Figure:
    """Two panels (at initialisation | late in training): the FFN second weight's gradient norm
    against the block, a line per configuration (label -> {"init": profile, "late": profile}, see
    :func:`ffn_profile`) with its seed interval as a band."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    colors = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, by_when) in enumerate(profiles.items()):
        color = colors[i % len(colors)]
        for ax, when in zip(axes, ("init", "late")):
            profile = by_when.get(when)
            if not profile or not profile["layers"]:
                continue
            blocks = list(profile["layers"])
            mean, low, high = (np.array([profile["layers"][b][j] for b in blocks]) for j in range(3))
            x = range(len(blocks))
            ax.plot(x, mean, "o-", color=color, label=f"{label}, slope {profile['slope']}")
            if np.isfinite(low).all():
                ax.fill_between(x, low, high, color=color, alpha=0.15, linewidth=0)
            ax.set_xticks(list(x), blocks)
    axes[0].set_title("at initialisation (mean over the first training batches, no step)")
    axes[1].set_title(f"late in training (last {LATE_RECORDS} logged steps)")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("block (input -> output)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("gradient norm of the FFN second weight")
    fig.suptitle(
        f"FFN second-weight gradient norm by layer, pre- vs post-norm (cf. Xiong et al., 2020); "
        f"geometric mean over seeds, band: {int(LEVEL * 100)}% seed interval"
    )
    return fig


def plot_update_ratio(frames: dict[str, pd.DataFrame]) -> Figure:
    """Left: the whole net's update-to-weight ratio per logged step, a line per configuration;
    right: per block at the end of training."""
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
    fig.suptitle("Update-to-weight ratio per step, 2-layer pre-norm ViT, four optimizers (mean over seeds)")
    return fig


# -- the report's section -------------------------------------------------------------------------
def _label(name: str, config: str, members: pd.DataFrame) -> str:
    first = members.iloc[0]
    budget = first.get("budget") or "full"
    lr = first.get("lr")
    lr = f", lr {lr:g}" if isinstance(lr, (int, float)) and not math.isnan(lr) else ""
    return f"{OPTIMIZER_NAMES.get(name, name + '-norm')} ({config}{lr}, budget {budget}, n={len(members)})"


def _runs_used(used: dict[str, list[str]]) -> list[str]:
    return [
        "Runs: "
        + "; ".join(f"{label}: " + ", ".join(f"`{Path(r).name}`" for r in dirs) for label, dirs in used.items()),
        "",
    ]


def _fmt(v) -> str:
    return "" if v is None or math.isnan(v) else f"{v:.3g}"


def _pairs(runs: pd.DataFrame) -> tuple[list[tuple[pd.DataFrame | None, pd.DataFrame | None]], list[str]]:
    """Pre-norm and post-norm configurations paired by setting (same everything but the norm),
    and the study rows without runs."""
    sides = {norm: configurations(runs, config, attrs) for config, (norm, attrs) in NORM_CONFIGS.items()}
    missing = [config for config, (norm, _) in NORM_CONFIGS.items() if not sides[norm]]
    key = "setting" if "setting" in runs.columns else "group"
    settings = list(dict.fromkeys(m.iloc[0][key] for side in sides.values() for m in side))
    pairs = []
    for setting in settings:
        pre = next((m for m in sides["pre"] if m.iloc[0][key] == setting), None)
        post = next((m for m in sides["post"] if m.iloc[0][key] == setting), None)
        pairs.append((pre, post))
    return pairs, missing


def _norm_section(runs: pd.DataFrame, out_dir: Path, report: DynamicsReport) -> list[str]:
    pairs, missing = _pairs(runs)
    lines: list[str] = []
    profiles: dict[str, dict[str, dict]] = {}
    used: dict[str, list[str]] = {}
    sentences, rows, without = [], [], []
    for pre, post in pairs:
        slopes = {}
        for norm, members, config in (("pre", pre, "table2/6"), ("post", post, "table2/7")):
            if members is None:
                continue
            label = _label(norm, config, members)
            by_when = {when: ffn_profile(members, when) for when in ("init", "late")}
            if not any(p["layers"] for p in by_when.values()):
                without.append(label)
                continue
            profiles[label], used[label] = by_when, list(members["run"])
            slopes[norm] = {when: p["slope"] for when, p in by_when.items()}
            for when, p in by_when.items():
                rows += [
                    {
                        "configuration": label,
                        "when": when,
                        "block": b,
                        "n": p["n"],
                        "mean": m,
                        "ci95_low": lo,
                        "ci95_high": hi,
                    }
                    for b, (m, lo, hi) in p["layers"].items()
                ]
            report.summary[label] = {w: {"slope": p["slope"], "n": p["n"]} for w, p in by_when.items()}
        if "pre" in slopes and "post" in slopes:
            for when in ("init", "late"):
                pre_s, post_s = slopes["pre"][when], slopes["post"][when]
                if pre_s.n and post_s.n:
                    sentence = xiong_sentence(pre_s, post_s, WHEN[when])
                    report.summary.setdefault("xiong", []).append(
                        {"when": when, "verdict": xiong_verdict(pre_s, post_s), "sentence": sentence}
                    )
                    sentences.append(sentence)
    if profiles:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "dynamics_grad_norm_by_layer.png"
        plot_grad_norm_by_layer(profiles).savefig(path, dpi=110)
        csv = out_dir / "dynamics_grad_norm_by_layer.csv"
        pd.DataFrame(rows).to_csv(csv, index=False)
        report.files += [path, csv]
        lines += [f"![gradient norm by layer]({path.name})", ""]
        lines += [
            "| configuration | slope at initialisation | slope late in training |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {label} | {p['init']['slope']} | {p['late']['slope']} |" for label, p in profiles.items()]
        lines += [
            "",
            (
                "Slope: least-squares slope of ln(gradient norm of the FFN second weight) against the block's "
                f"index, per seed; its mean over seeds with the {int(LEVEL * 100)}% Student-t seed interval. Every "
                f"block's value: `{csv.name}`."
            ),
            "",
        ]
        lines += sentences or [
            "Xiong et al.'s pattern: no pre-norm and post-norm configuration of one setting to compare."
        ]
        lines += [""] + _runs_used(used)
    if without:
        lines += [
            f"No FFN gradient norms in the dynamics of {', '.join(without)} (runs older than the measurement).",
            "",
        ]
    if missing:
        lines += [
            (
                f"Gradient norm by layer: no run with dynamics for {', '.join(missing)} (Table 2 configs 6 "
                "and 7: `python train.py -m experiment=table2_6_adamw_6l,table2_7_adamw_6l_post seed=1,2,3`)."
            ),
            "",
        ]
    return lines


def write_dynamics(runs: pd.DataFrame, out_dir: str | Path) -> DynamicsReport:
    """Draw the dynamics figures that have runs into ``out_dir``; returns the files and a Markdown
    section for the report's README (with the numbers behind the figures, or what is missing)."""
    out_dir = Path(out_dir)
    report = DynamicsReport()
    lines = [
        "## Training dynamics",
        "",
        (
            "From each run's `dynamics.jsonl` (`callbacks.dynamics`); only the seeds of one configuration "
            "(same lr, budget and every other setting) are averaged, n counts seeds."
        ),
        "",
    ]
    lines += _norm_section(runs, out_dir, report)

    frames, used, missing = {}, {}, []
    for config, (name, attrs) in OPTIMIZER_CONFIGS.items():
        groups = configurations(runs, config, attrs)
        if not groups:
            missing.append(config)
        for members in groups:
            label = _label(name, config, members)
            frames[label] = mean_over_seeds(members)
            used[label] = list(members["run"])
    frames = {label: frame for label, frame in frames.items() if not frame.empty}
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
