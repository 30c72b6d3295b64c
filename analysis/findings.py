"""The study's findings (``STUDY.md``), each checked against the runs present.

Every finding is a list of checks; a check compares two configurations of the study (by their
``study_config``, e.g. ``table2/2`` vs ``table2/1``) on one metric, at one *setting*: the two sides
must share everything but the optimizer (its learning rate included), depth and norm placement
(same epochs, training data, batch size, ...), and one *budget* (``budget`` of the runs'
config, ``full`` when absent): runs of two budgets are never compared, and the Findings section
shows each budget on its own. The rules (``docs/findings.md`` has them with a worked example):

* **The test.** Both sides share >= 2 seeds (configurations run with one seed share its split,
  initialisation and data order): the paired t-test on the per-seed differences (t quantile with
  n - 1 degrees of freedom). Otherwise both sides have >= 2 runs: Welch's t-test. Otherwise (a side
  with a single run): **not tested (n=1)**; no spread is assumed, borrowed or pooled. Perplexities
  are tested on their logs (``analysis.stats.on_log_scale``): the difference is a log ratio A/B.
* **Time and memory.** ``train_seconds`` is compared only between runs measured alone on one kind of
  device, ``peak_memory_mb`` only on one kind of device (``analysis/timing.py``); else not tested.
* **The p-value** of a check is the two-sided p of the test at the claim's boundary (``b``: 0 for
  ``better`` and ``larger``, the margin ``m`` for ``not_better``, the nearer of ``-m``, ``m`` for
  ``similar``; the larger of both when the estimate lies between them). The p-values of all the
  checks of the report (every finding, every budget) are adjusted together by Holm's method; a
  check is decided when its adjusted p < ``ALPHA``, on the side of ``b`` its estimate lies on.
  (With one check, this is: the 95% interval excludes ``b``.)

Claims (``d``: the improvement A over B, oriented so that positive is what the study claims;
``m``: a margin relative to side B's mean; on the log scale the log of the ratio ``1 + m``), each
decided by its adjusted p:

* ``better`` (accuracy up, loss/perplexity/time down) and ``larger``: supported when ``d`` is
  significantly above 0, contradicted when significantly below;
* ``not_better`` (A does not improve on B by more than ``m``): contradicted only when ``d`` is
  significantly above ``m`` (the interval lies beyond the margin), supported when significantly below;
* ``similar`` (within ``m``): supported when ``d`` is significantly inside ``[-m, m]`` (both
  boundaries rejected), contradicted when significantly outside.

"No overfitting in 10 epochs" is checked on each run's own history (``metrics.json``): a run
overfits when its validation loss at epoch 10 is more than ``OVERFIT_TOL`` above its minimum over
epochs 1-10 (no p-value: an observation of each run).

A finding (per budget) is **supported** only when every one of its checks ran and is supported;
**mixed** when some checks are supported and others contradicted; **contradicted** when some are
contradicted and none supported; **partly tested (k of n checks)** when only k of its n checks ran
(missing runs, a single run, timings under load) and none is contradicted; **inconclusive** when all
ran and some are inconclusive; **not tested** when none ran but runs exist; **missing** when no
check has runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.runs import completed
from analysis.stats import compare_metric, holm, on_log_scale
from analysis.study import OPTIMIZER_NAMES, study_rows
from analysis.timing import alone, time_refusal
from lmvit.runs import read_metrics

ALPHA = 0.05
OVERFIT_TOL = 0.02
CHECK_VERDICTS = ("supported", "contradicted", "inconclusive", "not tested", "missing")
VERDICTS = ("supported", "partly tested", "mixed", "contradicted", "inconclusive", "not tested", "missing")
DEFAULT_BUDGET = "full"

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


def describe_setting(run: pd.Series, with_lr: bool = True) -> str:
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
    """The completed runs, by budget, with whether each run's time was measured alone."""

    def __init__(self, runs: pd.DataFrame) -> None:
        self.done = completed(runs).copy()
        if "budget" not in self.done.columns:
            self.done["budget"] = DEFAULT_BUDGET
        self.done["budget"] = self.done["budget"].fillna(DEFAULT_BUDGET)
        # every run found counts for "side by side" (a failed run competed for the machine too)
        why = alone(runs) if "load_1m" in runs.columns else pd.Series("no load record", index=runs.index)
        self.why_not_alone = why.reindex(self.done.index).fillna("no load record")

    @property
    def budgets(self) -> list[str]:
        found = list(dict.fromkeys(self.done["budget"])) if not self.done.empty else []
        return found or [DEFAULT_BUDGET]

    def sides(self, task: str, config: str, budget: str) -> pd.DataFrame:
        d = self.done
        if d.empty:
            return d
        return d[(d["task"] == task) & (d["study_config"] == config) & (d["budget"] == budget)]

    def values(self, members: pd.DataFrame, metric: str) -> dict:
        """``{seed: value}`` of the runs with a finite ``metric`` (the run's path when no seed)."""
        if metric not in members.columns:
            return {}
        out = {}
        for _, r in members.iterrows():
            v = pd.to_numeric(pd.Series([r[metric]]), errors="coerce").iloc[0]
            if pd.notna(v) and math.isfinite(v):
                key = (
                    int(r["seed"])
                    if isinstance(r["seed"], (int, float, np.number)) and pd.notna(r["seed"])
                    else r["run"]
                )
                out[key] = float(v)
        return out


def _decision(claim: str, d, sign: float, margin: float) -> tuple[float, str, float]:
    """(p at the claim's boundary, the verdict if significant, the boundary on the diff's scale)
    for the oriented improvement ``sign * diff`` (see the module docstring)."""
    est = sign * d.diff
    if claim in ("better", "larger"):
        return d.p_at(0.0), "supported" if est > 0 else "contradicted", 0.0
    if claim == "not_better":
        return d.p_at(sign * margin), "contradicted" if est > margin else "supported", sign * margin
    if claim == "similar":
        if -margin < est < margin:
            return max(d.p_at(-margin), d.p_at(margin)), "supported", margin
        edge = margin if est >= margin else -margin
        return d.p_at(sign * edge), "contradicted", sign * edge
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


def _missing(finding: Finding, check, budget: str, reason: str, verdict: str = "missing") -> dict:
    return {"finding": finding.key, "budget": budget, "check": _check_text(check), "verdict": verdict, "reason": reason}


def _compare(finding: Finding, check: Compare, groups: _Groups, budget: str) -> list[dict]:
    side_a, side_b = groups.sides(check.task, check.a, budget), groups.sides(check.task, check.b, budget)
    lacking = [c for c, s in ((check.a, side_a), (check.b, side_b)) if s.empty]
    if lacking:
        return [
            _missing(
                finding,
                check,
                budget,
                "no completed runs of " + " and ".join(_label(c) for c in lacking) + f" at budget {budget}",
            )
        ]
    settings = [s for s in dict.fromkeys(side_a["setting"]) if s in set(side_b["setting"])]
    if not settings:
        return [
            _missing(
                finding,
                check,
                budget,
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
        base = {
            "finding": finding.key,
            "budget": budget,
            "check": _check_text(check),
            "task": check.task,
            "metric": check.metric,
            "claim": check.claim,
            "setting": describe_setting(a.iloc[0]),
            "A": a.iloc[0]["label"],
            "B": b.iloc[0]["label"],
            "runs A": "; ".join(a["run"]),
            "runs B": "; ".join(b["run"]),
            "seeds A": seeds(a),
            "seeds B": seeds(b),
            "folders A": _folders(a),
            "folders B": _folders(b),
            "n A": len(va),
            "n B": len(vb),
        }
        if not va or not vb:
            what = "GPU memory (CPU runs record none)" if check.metric == "peak_memory_mb" else check.metric
            lacking = " and ".join(c for c, v in ((check.a, va), (check.b, vb)) if not v)
            rows.append({**base, "verdict": "missing", "reason": f"no {what} in the runs of {lacking}"})
            continue
        sides = compare_metric(check.metric, va, vb)
        log = on_log_scale(check.metric)  # diff, interval and margin: log ratios A/B
        margin = (math.log1p(check.margin_rel) if log else check.margin_rel * abs(sides.b.mean)) or 0.0
        numbers = {
            "mean A": sides.a.mean,
            "mean B": sides.b.mean,
            "std A": sides.a.std,
            "std B": sides.b.std,
            "margin": margin if check.margin_rel else math.nan,
            "scale": "log" if log else "linear",
        }
        refusal = time_refusal(check.metric, a, b, groups.why_not_alone)
        if refusal or sides.difference is None:
            rows.append({**base, **numbers, "verdict": "not tested", "reason": refusal or sides.reason})
            continue
        d = sides.difference
        sign = 1.0 if check.claim in ("larger", "similar") or higher_is_better(check.metric) else -1.0
        p, if_significant, boundary = _decision(check.claim, d, sign, margin)
        rows.append(
            {
                **base,
                **numbers,
                "n pairs": d.n if d.method == "paired t" else np.nan,
                "paired seeds": ", ".join(map(str, sides.shared_seeds)),
                "diff": d.diff,
                "ci low": d.ci_low,
                "ci high": d.ci_high,
                "method": d.method,
                "df": d.df,
                "boundary": boundary,
                "p": p,
                "p (diff = 0)": d.p,
                "_if_significant": if_significant,
            }
        )
    return rows


def _history(run: str) -> list[dict]:
    return (read_metrics(run) or {}).get("history") or []


def _overfitting(finding: Finding, check: NoOverfitting, groups: _Groups, budget: str) -> list[dict]:
    rows, short = [], []
    for config in check.configs:
        members = groups.sides(check.task, config, budget)
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
                short.append(f"{config} [{describe_setting(first)}]")
                continue
            over = [r > OVERFIT_TOL for r in rises]
            verdict = "contradicted" if all(over) else "supported" if not any(over) else "inconclusive"
            rows.append(
                {
                    "finding": finding.key,
                    "budget": budget,
                    "check": f"{_label(config)}: no overfitting within {check.epochs} epochs",
                    "task": check.task,
                    "metric": "val/loss",
                    "setting": describe_setting(first),
                    "A": first["label"],
                    "runs A": "; ".join(group["run"]),
                    "seeds A": seeds(group),
                    "folders A": _folders(group),
                    "verdict": verdict,
                    "n A": len(rises),
                    "mean A": float(np.mean(rises)),
                    "method": "each run's history",
                    "reason": (
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
        return [_missing(finding, check, budget, reason)]
    return rows


def overall(verdicts: list[str]) -> tuple[str, str]:
    """(kind, text) of a finding from its checks' verdicts (rules: module docstring)."""
    n = len(verdicts)
    ran = [v for v in verdicts if v in ("supported", "contradicted", "inconclusive")]
    if not ran:
        kind = "missing" if all(v == "missing" for v in verdicts) else "not tested"
        return kind, kind
    has_s, has_c = "supported" in ran, "contradicted" in ran
    if has_s and has_c:
        kind = "mixed"
    elif has_c:
        kind = "contradicted"
    elif len(ran) < n:
        kind = "partly tested"
    elif all(v == "supported" for v in ran):
        kind = "supported"
    else:
        kind = "inconclusive"
    text = f"{kind} ({len(ran)} of {n} checks)" if kind == "partly tested" else kind
    if kind in ("mixed", "contradicted") and len(ran) < n:
        text += f" ({len(ran)} of {n} checks tested)"
    return kind, text


@dataclass
class Findings:
    summary: pd.DataFrame  # one row per finding and budget: its verdict and the counts of its checks
    checks: pd.DataFrame  # one row per check, setting and budget: the numbers and runs behind the verdict


CHECK_COLUMNS = (  # findings.csv: these first, then the runs and the rest
    "finding",
    "budget",
    "check",
    "setting",
    "A",
    "B",
    "n A",
    "n B",
    "seeds A",
    "seeds B",
    "paired seeds",
    "mean A",
    "mean B",
    "diff",
    "ci low",
    "ci high",
    "method",
    "boundary",
    "p",
    "p adjusted",
    "verdict",
    "reason",
)


def check_findings(runs: pd.DataFrame, findings: tuple[Finding, ...] = FINDINGS) -> Findings:
    """Every finding of the study against ``runs`` (a :func:`analysis.runs.load_runs` frame)."""
    groups = _Groups(runs)
    checks: list[dict] = []
    for budget in groups.budgets:
        for finding in findings:
            for check in finding.checks:
                if isinstance(check, NoOverfitting):
                    checks += _overfitting(finding, check, groups, budget)
                else:
                    checks += _compare(finding, check, groups, budget)
    # Holm over every check of the report with a p-value, then each such check's verdict
    adjusted = holm(r.get("p", math.nan) for r in checks)
    family = sum(math.isfinite(x) for x in adjusted)
    for row, p_adj in zip(checks, adjusted):
        if "_if_significant" not in row:
            continue
        row["p adjusted"] = p_adj
        significant = p_adj < ALPHA
        row["verdict"] = row.pop("_if_significant") if significant else "inconclusive"
        row["reason"] = (
            f"{row['method']}: Holm-adjusted p {p_adj:.3g} {'<' if significant else '>='} {ALPHA:g} "
            f"(raw p {row['p']:.3g} at {row['boundary']:+.4g}, {family} "
            "checks adjusted together)"
        )
    frame = pd.DataFrame(checks)
    if not frame.empty:
        frame = frame[[c for c in CHECK_COLUMNS if c in frame.columns] + [c for c in frame if c not in CHECK_COLUMNS]]
    summary = []
    for budget in groups.budgets:
        for finding in findings:
            verdicts = [r["verdict"] for r in checks if r["finding"] == finding.key and r["budget"] == budget]
            kind, text = overall(verdicts)
            summary.append(
                {
                    "finding": finding.key,
                    "budget": budget,
                    "claim": finding.claim,
                    "source": finding.source,
                    "verdict": text,
                    "kind": kind,
                    "checks": len(verdicts),
                    "ran": sum(v in ("supported", "contradicted", "inconclusive") for v in verdicts),
                    **{v: verdicts.count(v) for v in CHECK_VERDICTS},
                }
            )
    return Findings(pd.DataFrame(summary), frame)


# -- Markdown --------------------------------------------------------------------------------
def _digits(metric: str) -> int:
    return 1 if metric in ("train_seconds", "peak_memory_mb") else 2 if metric.endswith("ppl") else 4


def _numbers(row: pd.Series) -> str:
    if pd.isna(row.get("mean A")) or row.get("method") == "each run's history":
        return str(row.get("reason", ""))
    d = _digits(row["metric"])

    def side(s: str) -> str:
        spread = f" ± {row[f'std {s}']:.{d}f}" if pd.notna(row.get(f"std {s}")) else ""
        return f"{s} {row[f'mean {s}']:.{d}f}{spread} (n={int(row[f'n {s}'])})"

    text = f"{side('A')} vs {side('B')}"
    log = row.get("scale") == "log"
    if pd.notna(row.get("diff")):
        how = (
            f"paired t over seeds {row['paired seeds']}" if row["method"] == "paired t" else "Welch, independent sides"
        )
        if log:  # the test ran on the logs: the difference and its interval as ratios A/B
            text += (
                f": ratio A/B {math.exp(row['diff']):.4g}, 95% CI [{math.exp(row['ci low']):.4g}, "
                f"{math.exp(row['ci high']):.4g}] ({how}, on the logs; p {row['p']:.3g} at ratio "
                f"{math.exp(row['boundary']):.4g}, Holm-adjusted p {row['p adjusted']:.3g})"
            )
        else:
            text += (
                f": diff {row['diff']:+.{d}f}, 95% CI [{row['ci low']:+.{d}f}, {row['ci high']:+.{d}f}] ({how}; "
                f"p {row['p']:.3g} at {row['boundary']:+.{d}g}, Holm-adjusted p {row['p adjusted']:.3g})"
            )
    else:
        text += f": {row['reason']}"
    if pd.notna(row.get("margin")):
        text += f"; margin: ratio {math.exp(row['margin']):.4g}" if log else f"; margin {row['margin']:.{d}f}"
    return text


def _side(row: pd.Series, side: str) -> str:
    """``label, seeds 1, 2, 3: `folder` `` (the full run paths are in findings.csv)."""
    folders = ", ".join(f"`{f}`" for f in str(row.get(f"folders {side}") or "").split("; ") if f)
    return f"{row[side]}, seed(s) {row[f'seeds {side}']}: {folders}"


def to_markdown(result: Findings) -> str:
    """The Findings section, one part per budget: a verdict per finding, then each check with its
    numbers and runs."""
    lines = [
        "Paired t-test over shared seeds (>= 2), else Welch (>= 2 runs a side), else not tested (n=1); "
        f"Holm-adjusted p < {ALPHA:g} across all the checks below decides; timings only between runs measured "
        "alone on one kind of device (rules: `docs/findings.md`).",
        "",
    ]
    for budget, summary in result.summary.groupby("budget", sort=False):
        lines += [
            f"### Budget: {budget}",
            "",
            f"Runs of budget `{budget}` only (`budget.name` in their config.yaml; none: `{DEFAULT_BUDGET}`).",
            "",
            "| Finding (study) | Verdict | Checks: supported / contradicted / inconclusive / not tested / missing |",
            "| --- | --- | --- |",
        ]
        for _, f in summary.iterrows():
            counts = " / ".join(str(int(f[v])) for v in CHECK_VERDICTS)
            lines.append(f"| {f['claim']} ({f['source']}) | **{f['verdict']}** | {counts} |")
        lines.append("")
        checks = result.checks[result.checks["budget"] == budget] if not result.checks.empty else result.checks
        for _, f in summary.iterrows():
            lines += [f"#### {f['claim']} [{budget}]: {f['verdict']}", ""]
            rows = checks[checks["finding"] == f["finding"]] if not checks.empty else checks
            for _, row in rows.iterrows():
                setting = f" [{row['setting']}]" if isinstance(row.get("setting"), str) else ""
                lines.append(f"- **{row['verdict']}**: {row['check']}{setting}. {_numbers(row)}")
                if isinstance(row.get("runs A"), str):
                    used = f"A = {_side(row, 'A')}"
                    if isinstance(row.get("runs B"), str):
                        used += f"; B = {_side(row, 'B')}"
                    lines.append(f"  - runs (without seed=N; paths in findings.csv): {used}")
            lines.append("")
    return "\n".join(lines)
