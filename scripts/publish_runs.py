"""Copy the records of a log folder's completed runs into the repository (no checkpoints, no data).

    python scripts/publish_runs.py logs/study docs/results/cpu/runs
    python -m analysis docs/results/cpu/runs --out docs/results/cpu/report

For every run below SRC whose metrics.json says ``completed``: metrics.json, config.yaml,
dynamics.jsonl and .hydra/ (what the report reads), at the same relative path below DEST. A run
published before is replaced by its newer record; runs not completed yet are left out (publish again
when they are). Prints what it copied.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmvit.runs import find_run_dirs, read_metrics  # noqa: E402

RECORDS = ("metrics.json", "config.yaml", "dynamics.jsonl")


def publish(src: Path, dest: Path) -> list[Path]:
    copied = []
    for run in find_run_dirs(src):
        if (read_metrics(run) or {}).get("status") != "completed":
            continue
        target = dest / run.relative_to(src.resolve())
        target.mkdir(parents=True, exist_ok=True)
        for name in RECORDS:
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
        if (run / ".hydra").is_dir():
            shutil.copytree(run / ".hydra", target / ".hydra", dirs_exist_ok=True)
        copied.append(target)
    return copied


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="a log folder (e.g. logs/study)")
    p.add_argument("dest", type=Path, help="where the records go (e.g. docs/results/cpu/runs)")
    args = p.parse_args()
    if not args.src.is_dir():
        sys.exit(f"No such folder: {args.src} (pass the log folder the runs were written to)")
    copied = publish(args.src, args.dest)
    for target in copied:
        print(target)
    print(f"{len(copied)} completed runs published to {args.dest}")


if __name__ == "__main__":
    main()
