"""Write the report of a sweep (or any set of runs): tables, figures and the list of runs.

    python -m analysis logs/multiruns/2026-11-29_10-00-00        # -> <that dir>/report/
    python -m analysis logs/multiruns/A logs/multiruns/B --out report/

Output: ``table{1,2,3}.md`` and ``.csv`` (the study's columns, one row per configuration: mean
± std over its seeds with n, the CSV adding the 95% interval, the published numbers and the
difference beside ours), ``figure{1..6}.png`` (those with runs; mean curves with ± 1 std bands),
``<task>_all_*.png``, ``findings.md`` / ``findings.csv`` (one row per check: sides, n, seeds,
means, difference, interval, test, p, Holm-adjusted p, verdict, reason) / ``findings_summary.csv``
(one row per finding and budget: supported, partly tested, mixed, contradicted, ...),
``lr_grid.md`` / ``lr_grid.csv`` / ``lr_grid_points.csv`` (optimizers at their best learning rate,
where the runs hold learning-rate grids), ``runs.csv`` (every run found, with its status) and
``README.md`` tying them together. Runs still running, failed, or without ``metrics.json`` (and
repeated seeds) are listed, not reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import findings as findings_md
from analysis import lrgrid as lrgrid_md
from analysis.dynamics import write_dynamics
from analysis.figures import BAND, make_figures, save_figures
from analysis.findings import Findings, check_findings
from analysis.lrgrid import LrGrids, lr_grids
from analysis.recipes import TITLES as BEYOND_TITLES  # runs beyond the study
from analysis.recipes import beyond_tables
from analysis.runs import completed, epoch_curves, load_runs, load_scalars
from analysis.study import SECOND_REFERENCE
from analysis.tables import all_tables, to_markdown

LR_TITLE = "Optimizers at their best learning rate"
TITLES = {
    "table1": "Table 1: LSTM on WikiText-2 (loss, perplexity, train time in s)",
    "table2": "Table 2: ViT on CIFAR-10 (loss, accuracy, train time in s)",
    "table3": "Table 3: ViT memory (MB)",
    **BEYOND_TITLES,
}


@dataclass
class Report:
    runs: pd.DataFrame
    curves: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    findings: Findings | None = None
    lr_grids: LrGrids | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def not_reported(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] != "completed"]


def build_report(paths: str | Path | Iterable[str | Path]) -> Report:
    """Load the runs below ``paths`` and build the tables and per-epoch curves (no files)."""
    runs = load_runs(paths)
    done = completed(runs)
    curves = epoch_curves(load_scalars(done["run"])) if not done.empty else epoch_curves(pd.DataFrame())
    return Report(
        runs=runs,
        curves=curves,
        tables={**all_tables(runs), **beyond_tables(runs)},
        findings=check_findings(runs),
        lr_grids=lr_grids(runs),
    )


def write_report(paths: str | Path | Iterable[str | Path], out_dir: str | Path | None = None) -> Report:
    """Build the report and write it into ``out_dir`` (default: ``<first path>/report``)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("write_report needs at least one sweep or run directory")
    out = Path(out_dir) if out_dir is not None else paths[0] / "report"
    report = build_report(paths)
    out.mkdir(parents=True, exist_ok=True)

    files = []
    for name, table in report.tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
        (out / f"{name}.md").write_text(table_sections(name, table))
        files += [out / f"{name}.csv", out / f"{name}.md"]
    report.findings.checks.to_csv(out / "findings.csv", index=False)
    report.findings.summary.to_csv(out / "findings_summary.csv", index=False)
    (out / "findings.md").write_text(f"## Findings\n\n{findings_md.to_markdown(report.findings)}")
    report.lr_grids.best.to_csv(out / "lr_grid.csv", index=False)
    report.lr_grids.points.to_csv(out / "lr_grid_points.csv", index=False)
    (out / "lr_grid.md").write_text(f"## {LR_TITLE}\n\n{lrgrid_md.to_markdown(report.lr_grids)}")
    files += [
        out / n
        for n in (
            "findings.csv",
            "findings_summary.csv",
            "findings.md",
            "lr_grid.csv",
            "lr_grid_points.csv",
            "lr_grid.md",
        )
    ]
    figures = make_figures(report.runs, report.curves)
    files += save_figures(figures, out)
    report.runs.to_csv(out / "runs.csv", index=False)
    files.append(out / "runs.csv")
    dynamics = write_dynamics(report.runs, out)  # training-dynamics figures and section (analysis/dynamics.py)
    (out / "README.md").write_text(_index(report, files, paths) + "\n" + dynamics.markdown)
    files += dynamics.files + [out / "README.md"]
    report.files = files
    return report


def table_sections(name: str, table: pd.DataFrame) -> str:
    """A table's Markdown, one section per budget (``conf/budget/``) with the budget in its title."""
    budgets = list(dict.fromkeys(table["Budget"])) if "Budget" in table.columns and not table.empty else []
    if not budgets:
        return f"## {TITLES[name]}\n\n{to_markdown(table)}"
    parts = []
    for budget in budgets:
        rows = table[table["Budget"] == budget].drop(columns="Budget")
        if "Envelope" in rows.columns and not rows["Envelope"].astype(bool).any():
            rows = rows.drop(columns="Envelope")
        parts.append(f"## {TITLES[name]}, budget {budget}\n\n{to_markdown(rows)}")
    return "\n".join(parts)


def _index(report: Report, files: list[Path], paths: list[Path]) -> str:
    runs = report.runs
    lines = [
        "# Report",
        "",
        "Runs from: " + ", ".join(f"`{p}`" for p in paths),
        "",
        f"{len(runs)} runs found, {int((runs['status'] == 'completed').sum())} completed and reported.",
        "Cells read `ours (study X, diff ours-X)` where the run reproduces a configuration of the study.",
        "A configuration run with several seeds shows `mean ± std (n=k)` (sample std over its seeds; the",
        "difference is mean - study); the CSV adds each mean's Student-t 95% interval (`(ci95 low|high)`).",
        "Each table and figure shows one budget (`conf/budget/`: `full` is the study's, `cpu` a reduced",
        "study), named in its title. Table 2's full-scale rows add a second reference run of the same",
        f"assignment ({SECOND_REFERENCE}) and say where our mean and its seed interval lie against the",
        "envelope [min, max] of the study's and that run's validation accuracy.",
        "",
    ]
    for name, table in report.tables.items():
        lines += [table_sections(name, table), f"CSV: `{name}.csv`", ""]
    pngs = [f for f in files if f.suffix == ".png"]
    if pngs:
        lines += ["## Figures", "", f"Configurations with several seeds: mean curve, {BAND}.", ""]
        lines += [f"![{f.stem}]({f.name})" for f in pngs] + [""]
    lines += [
        "## Findings",
        "",
        "Each finding of the study against the runs present (rules: `docs/findings.md`).",
        "",
        findings_md.to_markdown(report.findings),
        "CSV: `findings.csv` (one row per check), `findings_summary.csv` (one row per finding and budget)",
        "",
    ]
    lines += [
        f"## {LR_TITLE}",
        "",
        lrgrid_md.to_markdown(report.lr_grids),
        "CSV: `lr_grid.csv` (best per optimizer), `lr_grid_points.csv` (every learning rate)",
        "",
    ]
    missing = report.not_reported
    lines += ["## Runs not reported", ""]
    if missing.empty:
        lines.append("None: every run found has completed.")
    else:
        lines += ["| run | status | label | error |", "| --- | --- | --- | --- |"]
        for _, run in missing.iterrows():
            error = str(run.get("error") or "").replace("|", "\\|").replace("\n", " ")[:200]
            lines.append(f"| `{run['run']}` | {run['status']} | {run['label']} | {error} |")
    return "\n".join(lines) + "\n"
