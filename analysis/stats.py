"""Uncertainty over seeds: mean, sample standard deviation and a Student-t interval of one
configuration's runs, and the difference of two configurations.

Every interval here is two-sided at ``level`` (95% by default). :func:`compare` picks the test
(``docs/findings.md``): the paired t-test on the per-seed differences when both sides share >= 2
seeds (configurations run with one seed share its split, initialisation and data order), else
Welch's t-test when each side has >= 2 runs, else nothing: a side with a single run has no spread
of its own and is not tested (no assumed or borrowed spread, nothing pooled across configurations).
:func:`holm` adjusts the p-values of a family of checks (Holm 1979).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

LEVEL = 0.95


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    return float(_st.t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class Summary:
    """One configuration's values over its runs (seeds)."""

    n: int
    mean: float
    std: float  # sample std (ddof=1); NaN when n < 2
    ci_low: float  # mean -+ t(n-1) * std / sqrt(n); NaN when n < 2
    ci_high: float

    @property
    def sem(self) -> float:
        return self.std / math.sqrt(self.n) if self.n >= 2 else math.nan

    def fields(self) -> dict[str, float]:
        """``{"mean", "std", "n", "ci95 low", "ci95 high"}``: the columns of a report row."""
        return {"mean": self.mean, "std": self.std, "n": self.n, "ci95 low": self.ci_low, "ci95 high": self.ci_high}


def summarize(values: Iterable[float], level: float = LEVEL) -> Summary:
    """Mean, sample std and the Student-t ``level`` interval of the mean; NaN values are dropped."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = t_quantile(n - 1, level) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Difference:
    """``mean(a) - mean(b)`` with its ``level`` interval and how it was obtained."""

    diff: float
    ci_low: float
    ci_high: float
    method: str  # "paired t" (shared seeds), "welch" (independent sides)
    t: float = math.nan
    df: float = math.nan
    p: float = math.nan  # two-sided p-value of H0: difference == 0
    se: float = math.nan  # standard error of ``diff``
    n: int = 0  # pairs (paired t); 0 for Welch

    def p_at(self, boundary: float) -> float:
        """Two-sided p-value of H0: difference == ``boundary`` (same test, shifted null)."""
        return _p_value(self.diff - boundary, self.se, self.df)


def _p_value(shift: float, se: float, df: float) -> float:
    if se == 0:
        return 0.0 if shift else 1.0
    return float(2 * _st.t.sf(abs(shift / se), df))


def welch(a: Summary, b: Summary, level: float = LEVEL) -> Difference:
    """Welch's unequal-variance t-test and interval for ``mean(a) - mean(b)`` (both n >= 2).
    Two sides without any spread (e.g. a deterministic number) give the exact difference."""
    if a.n < 2 or b.n < 2:
        raise ValueError("Welch's test needs at least two runs on each side")
    diff = a.mean - b.mean
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(diff, diff, diff, "welch", math.inf if diff else 0.0, math.nan, 0.0 if diff else 1.0, 0.0)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    t = diff / se
    half = t_quantile(df, level) * se
    return Difference(diff, diff - half, diff + half, "welch", t, df, _p_value(diff, se, df), se)


def paired(a: Iterable[float], b: Iterable[float], level: float = LEVEL) -> Difference:
    """Paired t-test on the differences ``a[i] - b[i]`` (one pair per shared seed, n >= 2):
    mean difference -+ t(n-1) * sd / sqrt(n)."""
    d = np.asarray(list(a), dtype=float) - np.asarray(list(b), dtype=float)
    n = int(d.size)
    if n < 2:
        raise ValueError("the paired t-test needs at least two shared seeds")
    diff, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0:
        return Difference(diff, diff, diff, "paired t", math.inf if diff else 0.0, n - 1, 0.0 if diff else 1.0, 0.0, n)
    half = t_quantile(n - 1, level) * se
    return Difference(diff, diff - half, diff + half, "paired t", diff / se, n - 1, _p_value(diff, se, n - 1), se, n)


@dataclass(frozen=True)
class Sides:
    """The outcome of :func:`compare`: the test that ran (``difference``), or why none did."""

    a: Summary
    b: Summary
    difference: Difference | None
    reason: str = ""  # why not tested
    shared_seeds: tuple = ()


def on_log_scale(metric: str) -> bool:
    """Whether ``metric`` is compared on the log scale: a perplexity is the exponential of a mean
    cross-entropy, and its seed-to-seed spread grows with its level (SGD's 11,708 +- 2,354 against
    Adam's 344 +- 4), so two perplexities are compared as the difference of their logs, a log ratio
    A/B (the difference of the cross-entropies). Every other metric as it is."""
    return metric.rsplit("/", 1)[-1] == "ppl"


def compare_metric(metric: str, a: dict, b: dict, level: float = LEVEL) -> Sides:
    """:func:`compare` on ``metric``'s scale (:func:`on_log_scale`: the test and its interval on the
    logs, the difference a log ratio A/B); the sides' summaries stay on the metric's own scale."""
    if not on_log_scale(metric):
        return compare(a, b, level)

    def logs(values: dict) -> dict:
        return {k: math.log(v) if math.isfinite(v) and v > 0 else math.nan for k, v in values.items()}

    tested = compare(logs(a), logs(b), level)
    return Sides(
        summarize(a.values(), level),
        summarize(b.values(), level),
        tested.difference,
        tested.reason,
        tested.shared_seeds,
    )


def compare(a: dict, b: dict, level: float = LEVEL) -> Sides:
    """``a`` vs ``b``, each ``{seed: value}``: paired t over the shared seeds when there are >= 2
    of them, else Welch with >= 2 runs per side, else not tested (a side with a single run)."""
    sa, sb = summarize(a.values()), summarize(b.values())
    shared = tuple(s for s in a if s in b and np.isfinite(a[s]) and np.isfinite(b[s]))
    if len(shared) >= 2:
        return Sides(sa, sb, paired([a[s] for s in shared], [b[s] for s in shared], level), shared_seeds=shared)
    if sa.n >= 2 and sb.n >= 2:
        return Sides(sa, sb, welch(sa, sb, level))
    ones = [name for name, s in (("A", sa), ("B", sb)) if s.n < 2]
    return Sides(sa, sb, None, f"not tested (n=1): side {' and '.join(ones)} has a single run, no spread to test with")


def holm(pvalues: Iterable[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not counted):
    sort the m p-values, p_(i) -> max over j <= i of min(1, (m - j + 1) p_(j))."""
    p = list(pvalues)
    idx = sorted((i for i, x in enumerate(p) if x is not None and math.isfinite(x)), key=lambda i: p[i])
    m = len(idx)
    out = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
