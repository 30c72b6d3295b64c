"""Uncertainty over seeds: mean, sample standard deviation and a Student-t interval of one
configuration's runs, and the difference of two configurations (Welch's t-test).

Every interval here is two-sided at ``level`` (95% by default). A configuration with one run has
no spread of its own: its std and interval are NaN, and :func:`compare` then falls back on a
run-to-run spread stated by the caller (see ``analysis.findings``).
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
    method: str  # "welch" (both sides have >= 2 runs) or "stated spread" (a side has one run)
    t: float = math.nan
    df: float = math.nan
    p: float = math.nan  # two-sided p-value of Welch's t-test


def welch(a: Summary, b: Summary, level: float = LEVEL) -> Difference:
    """Welch's unequal-variance t-test and interval for ``mean(a) - mean(b)`` (both n >= 2).
    Two sides without any spread (e.g. a deterministic number) give the exact difference."""
    if a.n < 2 or b.n < 2:
        raise ValueError("Welch's test needs at least two runs on each side")
    diff = a.mean - b.mean
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(diff, diff, diff, "welch", math.inf if diff else 0.0, math.nan, 0.0 if diff else 1.0)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    t = diff / se
    half = t_quantile(df, level) * se
    p = float(2 * _st.t.sf(abs(t), df))
    return Difference(diff, diff - half, diff + half, "welch", t, df, p)


def stated_spread(a: Summary, b: Summary, sigma: float, k: float) -> Difference:
    """``mean(a) - mean(b)`` -+ ``k`` standard deviations of that difference, taking ``sigma`` as
    the run-to-run spread of one run: for sides with too few runs to measure their own."""
    diff = a.mean - b.mean
    half = k * sigma * math.sqrt(1 / a.n + 1 / b.n)
    return Difference(diff, diff - half, diff + half, "stated spread")


def pooled_std(summaries: Iterable[Summary]) -> tuple[float, int]:
    """Pooled sample std over configurations with >= 2 runs: sqrt(sum((n-1) s^2) / sum(n-1)),
    and how many configurations it pooled."""
    usable = [s for s in summaries if s.n >= 2 and math.isfinite(s.std)]
    dof = sum(s.n - 1 for s in usable)
    if not dof:
        return math.nan, 0
    return math.sqrt(sum((s.n - 1) * s.std**2 for s in usable) / dof), len(usable)
