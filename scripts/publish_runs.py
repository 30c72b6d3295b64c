"""Copy the records of a log folder's completed runs into the repository (no checkpoints, no data).

    python scripts/publish_runs.py logs/study docs/results/cpu/runs --exclude tuning
    python -m analysis docs/results/cpu/runs --out docs/results/cpu/report

For every run below SRC that has its result (metrics.json says ``completed``, or ``failed`` or
``diverged``: a rerun sweep skips these, lmvit/resume.py): metrics.json, config.yaml, dynamics.jsonl
and .hydra/ (what the reports read), at the same relative path below DEST. A run published before
is replaced by its newer record; runs still running or stopped are left out (publish again when
they finish); runs below an ``--exclude`` folder of SRC are left out (the tuning's runs, which have
a report of their own: docs/optimizer-tuning.md). Prints what it copied.

The other way round, published records copied back into an empty log folder, a fresh clone
continues a study: its rerun sweeps skip every published run (scripts/study_cpu.sh, step 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmvit.resume import publish_records  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="a log folder (e.g. logs/study)")
    p.add_argument("dest", type=Path, help="where the records go (e.g. docs/results/cpu/runs)")
    p.add_argument("--exclude", action="append", default=[], metavar="FOLDER", help="a folder of SRC to leave out")
    args = p.parse_args()
    if not args.src.is_dir():
        sys.exit(f"No such folder: {args.src} (pass the log folder the runs were written to)")
    missing = [f for f in args.exclude if not (args.src / f).is_dir()]
    if missing:
        sys.exit(f"No such folder in {args.src}: {', '.join(missing)} (--exclude names a folder of SRC)")
    copied = publish_records(args.src.resolve(), args.dest, tuple(args.exclude))
    for target in copied:
        print(target)
    print(f"{len(copied)} finished runs published to {args.dest}")


if __name__ == "__main__":
    main()
