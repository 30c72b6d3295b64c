"""``python -m analysis SWEEP_DIR [MORE_DIRS ...] [--out DIR]``: write the report (see analysis.report)."""

from __future__ import annotations

import argparse
import sys

from analysis.findings import VERDICTS
from analysis.report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Tables 1-3 and Figures 1-6 of the study from a sweep or any set of run directories.",
    )
    parser.add_argument("paths", nargs="+", help="sweep directories, log folders or run directories")
    parser.add_argument("--out", default=None, help="output folder (default: <first path>/report)")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.paths, args.out)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = report.files[-1].parent
    done = int((report.runs["status"] == "completed").sum())
    print(f"{len(report.runs)} runs found, {done} completed; report written to {out}")
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
