"""End to end: a real tiny sweep (debug=fast) -> report tables and figures, TensorBoard
HParams and custom scalars, and the analysis notebook executed headless.

The sweep runs once per test session (about a minute on two busy cores).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from analysis import epoch_curves, load_runs, load_scalars, table3, write_report
from analysis.__main__ import main as report_main
from analysis.study import TABLE1_COLUMNS, TABLE2_COLUMNS, TABLE3_COLUMNS, study_rows
from tests.helpers import ROOT, find_runs, hparams_view, load_metrics, run_train

pytestmark = pytest.mark.slow

# one multirun per model (their data overrides differ); two optimizers each. The LSTM trains on
# wiki.valid (the shared data has no train split) at a small width, to stay fast. `++`: a
# multirun first composes without the swept presets (model=vit), where these keys do not exist.
SWEEPS = {
    "vit": ["experiment=table2_1_adam,table2_3_sgd"],
    "lstm": [
        "experiment=table1_1_adam,table1_3_sgd",
        "data=wikitext2_offline",
        "++model.embedding_size=32",
        "++model.hidden_size=32",
        "++data.seq_len=32",
    ],
}
FAST = [
    "debug=fast",
    "callbacks.progress_bar=null",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, data_dir) -> Path:
    log_dir = tmp_path_factory.mktemp("tiny_sweep")
    cache = tmp_path_factory.mktemp("cache")  # the LSTM's token-id cache, not the user's
    # both sweeps at once, one thread each: mostly start-up (imports, data), so they overlap well
    with ThreadPoolExecutor(len(SWEEPS)) as pool:
        jobs = [
            pool.submit(
                run_train,
                "-m",
                *overrides,
                *FAST,
                log_dir=log_dir,
                data_dir=data_dir,
                env={"OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cache)},
            )
            for overrides in SWEEPS.values()
        ]
        for job in jobs:
            job.result()
    runs = find_runs(log_dir)
    assert len(runs) == sum(len(o[0].split(",")) for o in SWEEPS.values()), runs
    assert all("debug" in run.relative_to(log_dir).parts for run in runs)  # debug runs: logs/debug/...
    assert load_runs(log_dir).empty  # the report of the whole log folder leaves debug runs out
    return log_dir / "debug"


@pytest.fixture(scope="session")
def report_dir(tiny_sweep) -> Path:
    """``python -m analysis <sweep folder>`` (its ``main``, in this process to save a start-up)."""
    assert report_main([str(tiny_sweep)]) == 0
    return tiny_sweep / "report"


def _final(run_dir: Path) -> dict:
    summary = load_metrics(run_dir)
    return {
        **summary["final"],
        "train_seconds": summary["train_seconds"],
        "study_config": summary["experiment"]["study_config"],
    }


@pytest.mark.parametrize(
    "name, task, columns, metrics",
    [
        (
            "table1",
            "lstm",
            TABLE1_COLUMNS,
            {
                "Train loss": "train/loss",
                "Train PPL": "train/ppl",
                "Val loss": "val/loss",
                "Val PPL": "val/ppl",
                "Train time": "train_seconds",
            },
        ),
        (
            "table2",
            "vit",
            TABLE2_COLUMNS,
            {
                "Train loss": "train/loss",
                "Train Acc": "train/acc",
                "Val loss": "val/loss",
                "Val Acc": "val/acc",
                "Train Time": "train_seconds",
            },
        ),
    ],
)
def test_table_has_study_columns_our_numbers_and_the_difference(report_dir, tiny_sweep, name, task, columns, metrics):
    table = pd.read_csv(report_dir / f"{name}.csv")
    assert set(columns) <= set(table.columns)
    header = next(line for line in (report_dir / f"{name}.md").read_text().splitlines() if line.startswith("| Config"))
    assert set(columns) <= {cell.strip() for cell in header.strip("|").split("|")}
    runs = [r for r in find_runs(tiny_sweep) if load_metrics(r)["task"] == task]
    assert len(table) == len(runs)
    study = study_rows()
    for _, row in table.iterrows():
        ours = _final(Path(row["Run"]))  # independent: straight from the run's metrics.json
        published = study.loc[ours["study_config"]]
        for column, key in metrics.items():
            assert math.isfinite(row[column])
            assert row[column] == pytest.approx(ours[key], rel=1e-6)
            assert row[f"{column} (study)"] == pytest.approx(published[key])
            assert row[f"{column} (diff)"] == pytest.approx(ours[key] - published[key], rel=1e-6)
        assert row["Epochs"] == 2 and "2 of the study's 10 epochs" in row["Note"]
        if task == "lstm":  # offline data is flagged beside the numbers
            assert "trained on wiki.valid.tokens: not comparable" in row["Note"]


def test_table3_memory(report_dir, tiny_sweep):
    table = pd.read_csv(report_dir / "table3.csv")
    assert set(TABLE3_COLUMNS) <= set(table.columns)
    assert len(table) == len(SWEEPS["vit"][0].split(","))
    for _, row in table.iterrows():
        summary = load_metrics(Path(row["Run"]))
        assert row["Peak RSS (MB)"] == pytest.approx(summary["peak_rss_mb"]) and row["Peak RSS (MB)"] > 0
        config = int(summary["experiment"]["study_config"].split("/")[1])
        assert row["GPU memory (MB) (study)"] == study_rows().loc[f"table2/{config}", "peak_memory_mb"]
        if summary["peak_memory_mb"] is None:  # a CPU run: no GPU number, no difference
            assert math.isnan(row["GPU memory (MB)"]) and math.isnan(row["GPU memory (MB) (diff)"])


def test_table3_difference_on_a_gpu_run(tiny_sweep, tmp_path):
    """A run that recorded GPU memory gets the difference to the study's number."""
    run = next(r for r in find_runs(tiny_sweep) if load_metrics(r)["task"] == "vit")
    copy = tmp_path / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    summary = load_metrics(copy)
    summary["peak_memory_mb"] = 1300.5  # as EpochTimer records it on CUDA
    (copy / "metrics.json").write_text(json.dumps(summary))
    (row,) = table3(load_runs(copy)).to_dict("records")
    published = study_rows().loc[summary["experiment"]["study_config"], "peak_memory_mb"]
    assert row["GPU memory (MB)"] == 1300.5
    assert row["GPU memory (MB) (diff)"] == pytest.approx(1300.5 - published)


def test_figures_are_written(report_dir):
    expected = [
        "figure1",
        "figure3",
        "figure4",
        "vit_all_epochs",
        "vit_all_wallclock",
        "lstm_all_epochs",
        "lstm_all_wallclock",
    ]
    for stem in expected:
        path = report_dir / f"{stem}.png"
        assert path.stat().st_size > 10_000, path
        height, width, _ = matplotlib.image.imread(path).shape
        assert height > 200 and width > 400
    for stem in ("figure2", "figure5", "figure6"):  # no deeper runs in the tiny sweep
        assert not (report_dir / f"{stem}.png").exists()
    index = (report_dir / "README.md").read_text()
    assert all(f"({stem}.png)" in index for stem in expected)


def test_curves_from_event_files_match_metrics_json(tiny_sweep):
    runs = find_runs(tiny_sweep)
    curves = epoch_curves(load_scalars(runs))
    for run in runs:
        history = load_metrics(run)["history"]
        mine = curves[curves["run"] == str(run)].sort_values("epoch")
        assert list(mine["epoch"]) == [row["epoch"] + 1 for row in history]
        for key in ("train/loss", "val/loss", "time/train_s"):
            assert list(mine[key]) == pytest.approx([row[key] for row in history], rel=1e-5)


def test_unfinished_runs_are_listed_not_reported(tiny_sweep, tmp_path):
    """A sweep still running (no metrics.json yet) and partly failed: finished runs reported."""
    sweep = tmp_path / "sweep"
    runs = find_runs(tiny_sweep)[:3]
    for i, run in enumerate(runs):
        shutil.copytree(run, sweep / f"job{i}", ignore=shutil.ignore_patterns("checkpoints"))
    (sweep / "job0" / "metrics.json").unlink()  # still running
    failed = json.loads((sweep / "job1" / "metrics.json").read_text())
    failed.update(status="failed", error={"type": "RuntimeError", "message": "CUDA out of memory"})
    (sweep / "job1" / "metrics.json").write_text(json.dumps(failed))
    (sweep / "empty_job").mkdir()  # Hydra made the folder, the job never started: ignored

    report = write_report(sweep)
    statuses = dict(zip(report.runs["name"], report.runs["status"]))
    assert statuses["job0"] == "no metrics.json" and statuses["job1"] == "failed"
    assert "empty_job" not in statuses
    reported = pd.concat([pd.read_csv(sweep / "report" / f"table{i}.csv") for i in (1, 2)])
    assert sorted(Path(r).name for r in reported["Run"]) == sorted(n for n, s in statuses.items() if s == "completed")
    index = (sweep / "report" / "README.md").read_text()
    assert "no metrics.json" in index and "CUDA out of memory" in index


def test_cli_names_a_missing_directory(tmp_path, capsys):
    assert report_main([str(tmp_path / "nope")]) == 2
    assert "nope does not exist" in capsys.readouterr().err


# -- TensorBoard ---------------------------------------------------------------------------
def test_hparams_tab_lists_every_run_with_its_final_metrics(tiny_sweep):
    experiment, groups = hparams_view(tiny_sweep)
    runs = find_runs(tiny_sweep)
    assert len(groups.session_groups) == len(runs)
    hparam_names = {h.name for h in experiment.hparam_infos}
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"optimizer", "lr", "weight_decay", "layers", "norm", "seed", "label", "study_config"} <= hparam_names
    paths = [h for h in hparam_names if h.endswith(("_dir", "dirpath", "save_dir", "embeddings_path"))]
    assert not paths and not [h for h in hparam_names if h.startswith(("callbacks.", "logger.", "paths."))]
    # the sweep varies the optimizer (and the task): those columns lead the table, no run directory does
    columns = [h.name for h in experiment.hparam_infos]
    differing = [h.name for h in experiment.hparam_infos if h.differs]
    assert {"optimizer", "label"} <= set(differing) and columns[: len(differing)] == differing
    for run in runs:  # every run's own metrics are columns, whichever run TensorBoard read first
        task_metric = "acc" if load_metrics(run)["task"] == "vit" else "ppl"
        assert f"hparam/val/{task_metric}" in metric_tags
    by_run = {g.name.rsplit("/tensorboard", 1)[0]: g for g in groups.session_groups}
    for run in runs:
        group = by_run[str(run.relative_to(tiny_sweep))]
        values = {m.name.tag: m.value for m in group.metric_values}
        for key, value in load_metrics(run)["final"].items():
            assert values[f"hparam/{key}"] == pytest.approx(value, rel=1e-6)


def test_custom_scalars_layout_groups_train_and_val(tiny_sweep):
    import re

    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    for run in find_runs(tiny_sweep):
        acc = EventAccumulator(str(run / "tensorboard"), size_guidance={TENSORS: 0})
        acc.Reload()
        layout = layout_pb2.Layout()
        layout.ParseFromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
        charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
        scalar_tags = set(acc.Tags()["scalars"])
        metric = "acc" if load_metrics(run)["task"] == "vit" else "ppl"
        for name in ("loss", metric):
            (pattern,) = charts[name]
            assert {t for t in scalar_tags if re.search(pattern, t)} >= {f"train/{name}", f"val/{name}"}


# -- notebook ------------------------------------------------------------------------------
def test_notebook_executes_headless(tiny_sweep, tmp_path):
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    path = ROOT / "notebooks" / "analysis.ipynb"
    notebook = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), "saved with outputs"
    # kernel "python3" = this interpreter (the project's venv), whatever kernels the machine has
    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3",
                "language": "python",
            }
        )
    )
    manager = KernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)])
    )
    client = NotebookClient(notebook, km=manager, timeout=300, resources={"metadata": {"path": str(path.parent)}})
    client.execute(env={**os.environ, "LMVIT_SWEEP_DIR": str(tiny_sweep)})

    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 7  # figures 1, 3, 4 and the all-runs pairs
    text = "".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in outputs)  # results, prints
    assert "263168" in text  # 4 * 256 * 257: the study's attention, counted from the module
    assert str(tiny_sweep) in text  # it read the sweep it was pointed at


def test_publish_runs_copies_finished_records_only(tmp_path):
    """scripts/publish_runs.py: the records of runs with a result (completed, diverged), at their
    relative paths; no checkpoints, no unfinished runs, nothing under an --exclude folder; a bad
    folder is one line."""
    src, dest = tmp_path / "logs", tmp_path / "published"
    runs = (("table2/a", "completed"), ("table2/b", "interrupted"), ("table2/c", "running"), ("table2/d", "diverged"),
            ("tuning/vit/c", "completed"))  # fmt: skip
    for rel, status in runs:
        run = src / rel
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
        (run / "config.yaml").write_text("seed: 1\n")
        (run / "metrics.json").write_text(json.dumps({"status": status, "final": {}}))
    script = [sys.executable, "scripts/publish_runs.py", str(src), str(dest)]
    proc = subprocess.run([*script, "--exclude", "tuning"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    published = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert published == ["table2/a/config.yaml", "table2/a/metrics.json", "table2/d/config.yaml",
                         "table2/d/metrics.json"]  # fmt: skip
    assert proc.stdout.strip().splitlines()[-1] == f"2 finished runs published to {dest}"
    bad = subprocess.run([*script, "--exclude", "tunning"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        f"No such folder in {src}: tunning (--exclude names a folder of SRC)"
    ]
