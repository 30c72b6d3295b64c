"""Write the report of a sweep (or any set of runs): tables, figures and the list of runs.

    python -m analysis logs/vit/multiruns/2026-11-29_10-00-00        # -> <that dir>/report/
    python -m analysis logs/lstm/multiruns/A logs/vit/multiruns/B --out report/

Output: ``table{1,2,3}.md`` and ``.csv`` (the study's columns, with the published numbers and
the difference beside ours), ``figure{1..6}.png`` (those with runs), ``<task>_all_*.png``,
``runs.csv`` (every run found, with its status) and ``README.md`` tying them together. Runs
still running, failed, or without ``metrics.json`` are listed, not reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.dynamics import write_dynamics
from analysis.figures import make_figures, save_figures
from analysis.runs import completed, epoch_curves, load_runs, load_scalars
from analysis.tables import all_tables, to_markdown

TITLES = {
    "table1": "Table 1: LSTM on WikiText-2 (loss, perplexity, train time in s)",
    "table2": "Table 2: ViT on CIFAR-10 (loss, accuracy, train time in s)",
    "table3": "Table 3: ViT memory (MB)",
}


@dataclass
class Report:
    runs: pd.DataFrame
    curves: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    files: list[Path] = field(default_factory=list)

    @property
    def not_reported(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] != "completed"]


def build_report(paths: str | Path | Iterable[str | Path]) -> Report:
    """Load the runs below ``paths`` and build the tables and per-epoch curves (no files)."""
    runs = load_runs(paths)
    done = completed(runs)
    curves = epoch_curves(load_scalars(done["run"])) if not done.empty else epoch_curves(pd.DataFrame())
    return Report(runs=runs, curves=curves, tables=all_tables(runs))


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
        (out / f"{name}.md").write_text(f"## {TITLES[name]}\n\n{to_markdown(table)}")
        files += [out / f"{name}.csv", out / f"{name}.md"]
    figures = make_figures(report.runs, report.curves)
    files += save_figures(figures, out)
    report.runs.to_csv(out / "runs.csv", index=False)
    files.append(out / "runs.csv")
    dynamics = write_dynamics(report.runs, out)  # training-dynamics figures and section (analysis/dynamics.py)
    (out / "README.md").write_text(_index(report, files, paths) + "\n" + dynamics.markdown)
    files += dynamics.files + [out / "README.md"]
    report.files = files
    return report


def _index(report: Report, files: list[Path], paths: list[Path]) -> str:
    runs = report.runs
    lines = [
        "# Report",
        "",
        "Runs from: " + ", ".join(f"`{p}`" for p in paths),
        "",
        f"{len(runs)} runs found, {int((runs['status'] == 'completed').sum())} completed and reported.",
        "Cells read `ours (study X, diff ours-X)` where the run reproduces a configuration of the study.",
        "",
    ]
    for name, table in report.tables.items():
        lines += [f"## {TITLES[name]}", "", to_markdown(table), f"CSV: `{name}.csv`", ""]
    pngs = [f for f in files if f.suffix == ".png"]
    if pngs:
        lines += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in pngs] + [""]
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
