"""Run directories -> DataFrames -> the study's tables and figures.

from analysis import load_runs, load_scalars, epoch_curves, build_report, write_report
from analysis import check_findings, lr_grids       # the study's findings checked; best-lr comparison
python -m analysis SWEEP_DIR        # writes SWEEP_DIR/report/
"""

from analysis.findings import check_findings
from analysis.lrgrid import lr_grids
from analysis.report import Report, build_report, write_report
from analysis.runs import epoch_curves, find_run_dirs, load_runs, load_scalars
from analysis.tables import table1, table2, table3, to_markdown

__all__ = [
    "Report",
    "build_report",
    "check_findings",
    "lr_grids",
    "write_report",
    "epoch_curves",
    "find_run_dirs",
    "load_runs",
    "load_scalars",
    "table1",
    "table2",
    "table3",
    "to_markdown",
]
