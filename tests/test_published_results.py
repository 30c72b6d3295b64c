"""The published results (docs/results/) are what their committed runs give: every report folder is
rebuilt from its runs with the command its docs print, and every table and markdown page written must
equal the committed one (text exactly, CSV numbers to a relative 1e-9; a figure must exist); the
results' index counts the runs each folder holds. A report edited by hand, or left behind when runs
were added, fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import ROOT

RESULTS = ROOT / "docs" / "results"
TUNING = RESULTS / "cpu" / "tuning"


def _rel(path: Path) -> str:
    """As the docs print it (the report names its runs' folder): relative to the repository."""
    return str(path.relative_to(ROOT))


def _study(budget: str) -> tuple[list[str], Path]:
    return ["analysis", _rel(RESULTS / budget / "runs")], RESULTS / budget / "report"


def _tuning() -> tuple[list[str], Path]:
    workloads = sorted(_rel(p) for p in (TUNING / "runs").iterdir() if p.is_dir())
    return ["analysis.tuning", "report", *workloads, "--bench", _rel(TUNING / "bench_optimizers.jsonl")], TUNING


# every folder of docs/results/ that holds runs/, and how its report is written (REPRODUCTION.md and
# each folder's README print the same commands)
REPORTS = {
    "cpu": lambda: _study("cpu"),
    "full": lambda: _study("full"),
    "full-h100": lambda: _study("full-h100"),
    "cpu/tuning": _tuning,
}


def test_every_published_runs_folder_has_its_report_rebuilt_here():
    held = {
        str(p.parent.relative_to(RESULTS)) for p in RESULTS.rglob("runs") if p.is_dir() and "runs" not in p.parent.parts
    }
    assert held == set(REPORTS), f"add the new folder's report command to REPORTS: {sorted(held ^ set(REPORTS))}"


@pytest.mark.parametrize("folder", sorted(REPORTS))
def test_the_committed_report_is_what_its_runs_give(folder, tmp_path):
    args, committed = REPORTS[folder]()
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", *args, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(p.name for p in out.iterdir())
    assert written, proc.stdout
    for name in written:
        if name.endswith(".png"):
            assert (committed / name).is_file(), f"{folder}: the report draws {name}, which is not committed"
            continue
        rebuild = f"rebuild it: python -m {' '.join(args)} --out {_rel(committed)}"
        assert (committed / name).is_file(), f"docs/results/{folder}: {name} is not committed; {rebuild}"
        if (committed / name).read_text() == (out / name).read_text():
            continue
        if name.endswith(".csv"):  # numbers to a relative 1e-9 (a library's float printing aside)
            try:
                pd.testing.assert_frame_equal(
                    pd.read_csv(committed / name), pd.read_csv(out / name), check_exact=False, rtol=1e-9
                )
            except AssertionError as exc:
                raise AssertionError(
                    f"docs/results/{folder}: {name} differs from what its runs give; {rebuild}"
                ) from exc
        else:
            raise AssertionError(f"docs/results/{folder}: {name} differs from what its runs give; {rebuild}")
    # nothing stale beside it: every committed table, CSV and figure is one the report writes
    stale = {p.name for p in committed.iterdir() if p.suffix in {".csv", ".png"}} - set(written)
    assert not stale, f"docs/results/{folder}: {sorted(stale)} are no longer written by the report"


def test_the_results_index_counts_the_runs_each_folder_holds():
    index = (RESULTS / "README.md").read_text()
    rows = re.findall(r"^\| `([\w/-]+)/` \|[^|]*\| (\d+)", index, flags=re.M)
    assert {folder for folder, _ in rows} == set(REPORTS), rows
    for folder, count in rows:
        runs = len(list((RESULTS / folder / "runs").rglob("metrics.json")))
        assert int(count) == runs, f"docs/results/README.md says {count} runs in {folder}/, it holds {runs}"


def test_the_readme_quotes_the_tuning_reports_verdict_lines():
    """README's "What we found" quotes each workload's one-line verdict of the committed tuning
    report as written (line breaks aside): the answer, or how far its runs got, has one source."""
    verdicts = [ln for ln in (TUNING / "optimizer_tuning.md").read_text().splitlines() if ln.startswith("**Verdict**")]
    assert verdicts
    readme = " ".join((ROOT / "README.md").read_text().split())
    for line in verdicts:
        assert " ".join(line.split()) in readme, f'README.md\'s "What we found" should quote the report: {line}'
