"""``python -m analysis SWEEP_DIR [MORE_DIRS ...] [--out DIR]``: write the report (see analysis.report)."""

from __future__ import annotations

import argparse
import sys

from analysis.findings import VERDICTS
from analysis.report import write_report
from analysis.runs import find_run_dirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Tables 1-3 and Figures 1-6 of the study from a sweep or any set of run directories.",
    )
    parser.add_argument("paths", nargs="+", help="sweep directories, log folders or run directories")
    parser.add_argument("--out", default=None, help="output folder (default: <first path>/report)")
    args = parser.parse_args(argv)
    try:
        found = find_run_dirs(args.paths)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not found:
        print(
            f"error: no runs in {', '.join(args.paths)}: pass a folder written by train.py (a run, a sweep "
            "such as logs/multiruns/<date_time>, or a log folder holding them)",
            file=sys.stderr,
        )
        return 2
    report = write_report(args.paths, args.out)
    out = report.files[-1].parent
    done = int((report.runs["status"] == "completed").sum())
    print(f"{len(report.runs)} runs found, {done} completed; report written to {out}")
    if not done:
        for _, run in report.not_reported.iterrows():
            print(f"  not reported ({run['status']}): {run['run']}")
        statuses = ", ".join(f"{n} {s}" for s, n in report.runs["status"].value_counts().items())
        print(
            f"error: none of the {len(report.runs)} runs completed ({statuses}), nothing to report: "
            f"fix and rerun them (their errors: {out / 'runs.csv'}, column error)",
            file=sys.stderr,
        )
        return 1
    verdicts = report.findings.summary["kind"].value_counts() if report.findings is not None else {}
    print(
        "findings of the study: "
        + ", ".join(f"{int(verdicts.get(v, 0))} {v}" for v in VERDICTS)
        + f" (see {out / 'findings.md'})"
    )
    for _, run in report.not_reported.iterrows():
        print(f"  not reported ({run['status']}): {run['run']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
