"""The study's findings (``STUDY.md``), each checked against the runs present.

Every finding is a list of checks; a check compares two configurations of the study (by their
``study_config``, e.g. ``table2/2`` vs ``table2/1``) on one metric, at one *setting*: the two sides
must share everything but the optimizer (its learning rate included), depth and norm placement
(same epochs, training data, batch size, ...), so runs at a reduced budget are compared with each
other, never with full-scale ones. Each check gets a verdict from the interval of the difference
of means ``A - B`` (oriented so that positive is what the study claims):

* both sides with >= 2 runs (seeds): Welch's t-test and its 95% interval;
* a side with a single run: ``diff -+ K_STATED * sigma * sqrt(1/nA + 1/nB)``, ``sigma`` being the
  run-to-run spread of one run that the report states: the pooled std of the configurations of the
  same task and setting that have >= 2 seeds when there are any (measured), else an assumed
  ``DEFAULT_SPREAD_REL`` fraction of the compared value (assumed). So one seed per side supports
  or contradicts a claim only when the difference is ``K_STATED`` standard deviations away.

Claims and rules (``lo``, ``hi``: the interval of the claimed improvement, ``m``: a margin
relative to side B's mean):

* ``better`` (A better than B; accuracy up, loss/perplexity/time down) and ``larger``:
  supported if ``lo > 0``, contradicted if ``hi < 0``, inconclusive otherwise;
* ``not_better`` (A does not improve on B by more than ``m``): contradicted if ``lo > 0``,
  supported if ``hi <= m``, inconclusive otherwise;
* ``similar`` (within ``m``): supported if ``[lo, hi]`` lies inside ``[-m, m]``, contradicted if
  it lies outside, inconclusive otherwise.

"No overfitting in 10 epochs" is checked on each run's own history (``metrics.json``): a run
overfits when its validation loss at epoch 10 is more than ``OVERFIT_TOL`` above its minimum over
epochs 1-10. A check without the runs it needs is ``missing`` and says which runs it lacks. A
finding is contradicted if any of its checks is, supported if all checks with runs are, missing
if none has runs, and inconclusive otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.runs import completed
from analysis.stats import pooled_std, stated_spread, summarize, welch
from analysis.study import OPTIMIZER_NAMES, study_rows

K_STATED = 4.0
# the run-to-run std of one run assumed when the runs present cannot measure it, as a fraction of
# the compared value (by metric suffix): deliberately generous, so single seeds decide only clear cases
# (peak GPU memory depends on shapes, not on the seed: nearly deterministic)
DEFAULT_SPREAD_REL = {"acc": 0.02, "loss": 0.02, "ppl": 0.02, "train_seconds": 0.10, "peak_memory_mb": 0.005}
OVERFIT_TOL = 0.02
VERDICTS = ("supported", "contradicted", "inconclusive", "missing")

METRIC_NAMES = {
    "val/acc": "validation accuracy",
    "val/ppl": "validation perplexity",
    "val/loss": "validation loss",
    "train_seconds": "training time (s)",
    "peak_memory_mb": "GPU memory (MB)",
}


@dataclass(frozen=True)
class Compare:
    """``a`` vs ``b`` (study rows) on ``metric``: the study claims ``claim``."""

    task: str
    metric: str
    a: str
    b: str
    claim: str  # better | larger | not_better | similar
    margin_rel: float = 0.0


@dataclass(frozen=True)
class NoOverfitting:
    """No run of ``configs`` overfits within ``epochs`` epochs."""

    task: str
    configs: tuple[str, ...]
    epochs: int = 10


@dataclass(frozen=True)
class Finding:
    key: str
    claim: str
    source: str
    checks: tuple = field(default_factory=tuple)


def _vit(n: int) -> str:
    return f"table2/{n}"


def _lstm(n: int) -> str:
    return f"table1/{n}"


FINDINGS: tuple[Finding, ...] = (
    Finding(
        "adamw_vs_adam",
        "AdamW is slightly better and faster than Adam",
        "Table 2 (ViT)",
        (
            Compare("vit", "val/acc", _vit(2), _vit(1), "better"),
            Compare("vit", "train_seconds", _vit(2), _vit(1), "better"),
        ),
    ),
    Finding(
        "momentum_helps_sgd",
        "Momentum helps SGD",
        "Tables 1 and 2",
        (
            Compare("vit", "val/acc", _vit(4), _vit(3), "better"),
            Compare("lstm", "val/ppl", _lstm(4), _lstm(3), "better"),
        ),
    ),
    Finding(
        "sgd_worst",
        "SGD is the worst optimizer",
        "Tables 1 and 2",
        tuple(
            [Compare("vit", "val/acc", _vit(i), _vit(3), "better") for i in (1, 2, 4)]
            + [Compare("lstm", "val/ppl", _lstm(i), _lstm(3), "better") for i in (1, 2, 4)]
        ),
    ),
    Finding(
        "adam_best_lstm",
        "Adam and AdamW are the best optimizers for the LSTM",
        "Table 1",
        tuple(Compare("lstm", "val/ppl", _lstm(a), _lstm(b), "better") for a in (1, 2) for b in (3, 4)),
    ),
    Finding(
        "sgd_fastest",
        "SGD is the fastest per epoch",
        "Tables 1 and 2",
        tuple(
            [Compare("vit", "train_seconds", _vit(3), _vit(i), "better") for i in (1, 2, 4)]
            + [Compare("lstm", "train_seconds", _lstm(3), _lstm(i), "better") for i in (1, 2, 4)]
        ),
    ),
    Finding(
        "depth_helps_vit",
        "Depth helps the ViT (2 -> 4 -> 6 layers)",
        "Table 2",
        (
            Compare("vit", "val/acc", _vit(5), _vit(2), "better"),
            Compare("vit", "val/acc", _vit(6), _vit(5), "better"),
        ),
    ),
    Finding(
        "prenorm_beats_postnorm",
        "Pre-norm beats post-norm at 6 layers",
        "Table 2",
        (Compare("vit", "val/acc", _vit(6), _vit(7), "better"),),
    ),
    Finding(
        "memory_depth_not_optimizer",
        "GPU memory grows with depth, not with the optimizer",
        "Table 3",
        (
            Compare("vit", "peak_memory_mb", _vit(5), _vit(2), "larger"),
            Compare("vit", "peak_memory_mb", _vit(6), _vit(5), "larger"),
            *(Compare("vit", "peak_memory_mb", _vit(i), _vit(2), "similar", 0.05) for i in (1, 3, 4)),
        ),
    ),
    Finding(
        "no_overfitting",
        "No overfitting in 10 epochs (ViT)",
        "Table 2",
        (NoOverfitting("vit", tuple(_vit(i) for i in range(1, 8))),),
    ),
    Finding(
        "lstm_layers_do_not_help",
        "More LSTM layers do not help",
        "Table 1",
        (
            Compare("lstm", "val/ppl", _lstm(5), _lstm(2), "not_better", 0.01),
            Compare("lstm", "val/ppl", _lstm(6), _lstm(2), "not_better", 0.01),
        ),
    ),
)


def higher_is_better(metric: str) -> bool:
    return metric.endswith("acc")


def _default_rel(metric: str) -> float:
    for suffix, rel in DEFAULT_SPREAD_REL.items():
        if metric.endswith(suffix):
            return rel
    return 0.05


def budget(run: pd.Series, with_lr: bool = True) -> str:
    """What a configuration was trained with, in words: epochs, data (and learning rate)."""
    parts = [f"{int(run['epochs'])} epochs" if pd.notna(run.get("epochs")) else "? epochs"]
    subset = run.get("train_subset")
    parts.append(f"{int(subset)} training examples" if pd.notna(subset) and subset else "all training data")
    limit = run.get("limit_train_batches")
    if pd.notna(limit) and limit not in (1, 1.0):
        parts.append(f"limit_train_batches={limit}")
    train_file = run.get("train_file")
    offline = isinstance(train_file, str) and train_file.endswith(("valid.tokens", "test.tokens"))
    if run.get("task") == "lstm" and offline:
        parts.append(f"trained on {train_file.rsplit('/', 1)[-1]}")
    if with_lr and pd.notna(run.get("lr")):
        parts.append(f"lr {run['lr']:g}")
    return ", ".join(parts)


def seeds(members: pd.DataFrame) -> str:
    """The seeds of a configuration's runs, e.g. ``1, 2, 3``."""
    return ", ".join(
        str(int(s)) if isinstance(s, (int, float, np.number)) and pd.notna(s) else str(s) for s in members["seed"]
    )


def _folders(members: pd.DataFrame) -> str:
    """The runs' folder names without their ``seed=N`` (one name for a sweep's seeds)."""
    names = members["group_name"] if "group_name" in members.columns else members["name"]
    return "; ".join(dict.fromkeys(names))


def _label(config: str) -> str:
    row = study_rows().loc[config]
    opt = OPTIMIZER_NAMES.get(row["optimizer"], row["optimizer"])
    if row["task"] == "vit":
        return f"{config} (ViT {row['norm']}-norm {row['num_layers']}L {opt})"
    return f"{config} (LSTM {row['num_layers']}L {opt})"


class _Groups:
    """The completed configurations of the runs, with their summaries and stated spreads."""

    def __init__(self, runs: pd.DataFrame) -> None:
        self.done = completed(runs)
        self.spreads: dict[tuple, dict] = {}

    def sides(self, task: str, config: str) -> pd.DataFrame:
        d = self.done
        return d[(d["task"] == task) & (d["study_config"] == config)] if not d.empty else d

    def values(self, members: pd.DataFrame, metric: str) -> pd.Series:
        if metric not in members.columns:
            return pd.Series(dtype=float)
        return pd.to_numeric(members[metric], errors="coerce").dropna()

    def spread(self, task: str, metric: str, setting: str, reference: float, first: pd.Series) -> tuple[float, str]:
        """The run-to-run std of one run stated for (task, metric, setting) and where it comes from."""
        d = self.done
        same = d[(d["task"] == task) & (d["setting"] == setting)] if not d.empty else d
        summaries = [summarize(self.values(g, metric)) for _, g in same.groupby("group")]
        sigma, groups = pooled_std(summaries)
        if groups:
            source = f"measured: pooled std of {groups} configuration(s) with >= 2 seeds"
        else:
            rel = _default_rel(metric)
            sigma = rel * abs(reference)
            source = f"assumed: {rel * 100:g}% of the compared value (no seeds to measure it)"
        self.spreads[(task, metric, budget(first))] = {
            "task": task,
            "metric": metric,
            "setting": budget(first),
            "sigma": sigma,
            "source": source,
        }
        return sigma, source


def _interval(claim: str, lo: float, hi: float, margin: float) -> str:
    if claim in ("better", "larger"):
        return "supported" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"
    if claim == "not_better":
        return "contradicted" if lo > 0 else "supported" if hi <= margin else "inconclusive"
    if claim == "similar":
        if -margin <= lo and hi <= margin:
            return "supported"
        return "contradicted" if hi < -margin or lo > margin else "inconclusive"
    raise ValueError(f"unknown claim {claim!r}")


CLAIM_WORDS = {
    "better": "better than",
    "larger": "larger than",
    "not_better": "not better than",
    "similar": "about equal to",
}


def _check_text(check) -> str:
    if isinstance(check, NoOverfitting):
        return f"{check.task}: no run of {', '.join(check.configs)} overfits within {check.epochs} epochs"
    margin = f" (margin {check.margin_rel:.0%})" if check.margin_rel else ""
    metric = METRIC_NAMES.get(check.metric, check.metric)
    return f"{_label(check.a)} {CLAIM_WORDS[check.claim]} {_label(check.b)} in {metric}{margin}"


def _missing(finding: Finding, check, reason: str) -> dict:
    return {"finding": finding.key, "check": _check_text(check), "verdict": "missing", "reason": reason}


def _compare(finding: Finding, check: Compare, groups: _Groups) -> list[dict]:
    side_a, side_b = groups.sides(check.task, check.a), groups.sides(check.task, check.b)
    lacking = [c for c, s in ((check.a, side_a), (check.b, side_b)) if s.empty]
    if lacking:
        return [_missing(finding, check, "no completed runs of " + " and ".join(_label(c) for c in lacking))]
    settings = [s for s in dict.fromkeys(side_a["setting"]) if s in set(side_b["setting"])]
    if not settings:
        return [
            _missing(
                finding,
                check,
                f"runs of {check.a} and {check.b} exist but never at the same setting "
                "(epochs, data, lr, ...): nothing to compare",
            )
        ]
    rows = []
    for setting in settings:
        a = side_a[side_a["setting"] == setting]
        b = side_b[side_b["setting"] == setting]
        # one configuration per side (several could differ in e.g. weight decay: take the most seeds)
        a = max((g for _, g in a.groupby("group")), key=len)
        b = max((g for _, g in b.groupby("group")), key=len)
        va, vb = groups.values(a, check.metric), groups.values(b, check.metric)
        first = a.iloc[0]
        base = {
            "finding": finding.key,
            "check": _check_text(check),
            "task": check.task,
            "metric": check.metric,
            "setting": budget(first),
            "A": a.iloc[0]["label"],
            "B": b.iloc[0]["label"],
            "runs A": "; ".join(a["run"]),
            "runs B": "; ".join(b["run"]),
            "seeds A": seeds(a),
            "seeds B": seeds(b),
            "folders A": _folders(a),
            "folders B": _folders(b),
        }
        if va.empty or vb.empty:
            what = "GPU memory (CPU runs record none)" if check.metric == "peak_memory_mb" else check.metric
            rows.append(
                {
                    **base,
                    "verdict": "missing",
                    "reason": f"no {what} in the runs of "
                    + " and ".join(c for c, v in ((check.a, va), (check.b, vb)) if v.empty),
                }
            )
            continue
        sa, sb = summarize(va), summarize(vb)
        if sa.n >= 2 and sb.n >= 2:
            diff, sigma, source = welch(sa, sb), math.nan, "Welch's t-test over seeds"
        else:
            sigma, source = groups.spread(check.task, check.metric, setting, sb.mean, first)
            diff = stated_spread(sa, sb, sigma, K_STATED)
        sign = 1.0 if check.claim in ("larger", "similar") or higher_is_better(check.metric) else -1.0
        lo, hi = sorted((sign * diff.ci_low, sign * diff.ci_high))
        margin = check.margin_rel * abs(sb.mean)
        rows.append(
            {
                **base,
                "verdict": _interval(check.claim, lo, hi, margin),
                "n A": sa.n,
                "n B": sb.n,
                "mean A": sa.mean,
                "mean B": sb.mean,
                "std A": sa.std,
                "std B": sb.std,
                "diff": diff.diff,
                "ci low": diff.ci_low,
                "ci high": diff.ci_high,
                "method": diff.method,
                "p": diff.p,
                "sigma": sigma,
                "basis": source,
                "margin": margin if check.margin_rel else math.nan,
            }
        )
    return rows


def _history(run: str) -> list[dict]:
    try:
        return json.loads(Path(run, "metrics.json").read_text()).get("history") or []
    except (OSError, json.JSONDecodeError):
        return []


def _overfitting(finding: Finding, check: NoOverfitting, groups: _Groups) -> list[dict]:
    rows, short = [], []
    for config in check.configs:
        members = groups.sides(check.task, config)
        for _, group in members.groupby("group", sort=False):
            first = group.iloc[0]
            rises, gaps = [], []
            for run in group["run"]:
                history = sorted(_history(run), key=lambda r: r.get("epoch", 0))[: check.epochs]
                val = [r.get("val/loss") for r in history]
                if len(history) < check.epochs or not all(isinstance(v, (int, float)) for v in val):
                    continue
                rises.append((val[-1] - min(val)) / min(val))
                gaps.append(val[-1] - history[-1].get("train/loss", np.nan))
            if not rises:
                short.append(f"{config} [{budget(first)}]")
                continue
            over = [r > OVERFIT_TOL for r in rises]
            verdict = "contradicted" if all(over) else "supported" if not any(over) else "inconclusive"
            rows.append(
                {
                    "finding": finding.key,
                    "check": f"{_label(config)}: no overfitting within {check.epochs} epochs",
                    "task": check.task,
                    "metric": "val/loss",
                    "setting": budget(first),
                    "A": first["label"],
                    "runs A": "; ".join(group["run"]),
                    "seeds A": seeds(group),
                    "folders A": _folders(group),
                    "verdict": verdict,
                    "n A": len(rises),
                    "mean A": float(np.mean(rises)),
                    "basis": (
                        f"validation loss at epoch {check.epochs} vs its minimum over epochs 1-{check.epochs}: "
                        f"{', '.join(f'{r:+.1%}' for r in rises)} (overfitting: > +{OVERFIT_TOL:.0%}); "
                        f"val - train loss at epoch {check.epochs}: {np.nanmean(gaps):+.3f}"
                    ),
                }
            )
    if not rows:
        reason = f"no run with {check.epochs} epochs of history" + (
            f" (shorter runs: {'; '.join(short)})" if short else ": no completed runs of these configurations"
        )
        return [_missing(finding, check, reason)]
    return rows


def _overall(verdicts: list[str]) -> str:
    tested = [v for v in verdicts if v != "missing"]
    if not tested:
        return "missing"
    if "contradicted" in tested:
        return "contradicted"
    return "supported" if all(v == "supported" for v in tested) else "inconclusive"


@dataclass
class Findings:
    summary: pd.DataFrame  # one row per finding: key, claim, source, verdict, checks with/without runs
    checks: pd.DataFrame  # one row per check and setting: the numbers and the runs behind the verdict
    spreads: pd.DataFrame  # the run-to-run spreads stated for single-seed comparisons


def check_findings(runs: pd.DataFrame, findings: tuple[Finding, ...] = FINDINGS) -> Findings:
    """Every finding of the study against ``runs`` (a :func:`analysis.runs.load_runs` frame)."""
    groups = _Groups(runs)
    summary, checks = [], []
    for finding in findings:
        rows = []
        for check in finding.checks:
            rows += (
                _overfitting(finding, check, groups)
                if isinstance(check, NoOverfitting)
                else _compare(finding, check, groups)
            )
        verdicts = [r["verdict"] for r in rows]
        summary.append(
            {
                "finding": finding.key,
                "claim": finding.claim,
                "source": finding.source,
                "verdict": _overall(verdicts),
                **{v: verdicts.count(v) for v in VERDICTS},
            }
        )
        checks += rows
    return Findings(pd.DataFrame(summary), pd.DataFrame(checks), pd.DataFrame(list(groups.spreads.values())))


# -- Markdown --------------------------------------------------------------------------------
def _digits(metric: str) -> int:
    return 1 if metric in ("train_seconds", "peak_memory_mb") else 2 if metric.endswith("ppl") else 4


def _numbers(row: pd.Series) -> str:
    if row["verdict"] == "missing" and pd.isna(row.get("mean A")):
        return row.get("reason", "")
    if row.get("metric") == "val/loss" and pd.isna(row.get("mean B")):  # overfitting check
        return row["basis"]
    d = _digits(row["metric"])

    def side(s: str) -> str:
        spread = f" ± {row[f'std {s}']:.{d}f}" if pd.notna(row.get(f"std {s}")) else ""
        return f"{s} {row[f'mean {s}']:.{d}f}{spread} (n={int(row[f'n {s}'])})"

    interval = "95% CI" if row["method"] == "welch" else "interval"
    text = (
        f"{side('A')} vs {side('B')}: "
        f"diff {row['diff']:+.{d}f}, {interval} [{row['ci low']:+.{d}f}, {row['ci high']:+.{d}f}]"
    )
    if row["method"] == "welch":
        text += f" (Welch, p={row['p']:.3g})"
    else:
        text += (
            f" = diff -+ {K_STATED:g} x {row['sigma']:.4g} x sqrt(1/nA + 1/nB) "
            f"(one run on a side; spread {row['basis']})"
        )
    if pd.notna(row.get("margin")):
        text += f"; margin {row['margin']:.{d}f}"
    return text


def _side(row: pd.Series, side: str) -> str:
    """``label, seeds 1, 2, 3: `folder` `` (the full run paths are in findings.csv)."""
    folders = ", ".join(f"`{f}`" for f in str(row.get(f"folders {side}") or "").split("; ") if f)
    return f"{row[side]}, seed(s) {row[f'seeds {side}']}: {folders}"


def to_markdown(result: Findings) -> str:
    """The Findings section: a verdict per finding, then each check with its numbers and runs."""
    lines = [
        "| Finding (study) | Verdict | Checks: supported / contradicted / inconclusive / missing |",
        "| --- | --- | --- |",
    ]
    for _, f in result.summary.iterrows():
        counts = " / ".join(str(int(f[v])) for v in VERDICTS)
        lines.append(f"| {f['claim']} ({f['source']}) | **{f['verdict']}** | {counts} |")
    lines.append("")
    for _, f in result.summary.iterrows():
        lines += [f"### {f['claim']}: {f['verdict']}", ""]
        rows = result.checks[result.checks["finding"] == f["finding"]] if not result.checks.empty else []
        for _, row in rows.iterrows() if len(rows) else []:
            setting = f" [{row['setting']}]" if isinstance(row.get("setting"), str) else ""
            lines.append(f"- **{row['verdict']}**: {row['check']}{setting}. {_numbers(row)}")
            if isinstance(row.get("runs A"), str):
                used = f"A = {_side(row, 'A')}"
                if isinstance(row.get("runs B"), str):
                    used += f"; B = {_side(row, 'B')}"
                lines.append(f"  - runs (without seed=N; paths in findings.csv): {used}")
        lines.append("")
    if not result.spreads.empty:
        lines += [
            "Run-to-run spread stated for comparisons with a single run on a side "
            f"(one run supports or contradicts only beyond {K_STATED:g} standard deviations):",
            "",
            "| task | metric | setting | std of one run | source |",
            "| --- | --- | --- | --- | --- |",
        ]
        for _, s in result.spreads.iterrows():
            lines.append(f"| {s['task']} | {s['metric']} | {s['setting']} | {s['sigma']:.4g} | {s['source']} |")
        lines.append("")
    return "\n".join(lines)
