"""Run directories -> DataFrames -> the study's tables and figures.

    from analysis import load_runs, load_scalars, epoch_curves, build_report, write_report
    python -m analysis SWEEP_DIR        # writes SWEEP_DIR/report/
"""

from analysis.report import Report, build_report, write_report
from analysis.runs import epoch_curves, find_run_dirs, load_runs, load_scalars
from analysis.tables import table1, table2, table3, to_markdown

__all__ = [
    "Report", "build_report", "write_report", "epoch_curves", "find_run_dirs", "load_runs",
    "load_scalars", "table1", "table2", "table3", "to_markdown",
]
