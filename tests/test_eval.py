"""After training: ``eval.py`` re-evaluates a run's checkpoint (its numbers equal the run's own test
numbers), ``generate.py`` samples seeded text from the LSTM, and the default callbacks left images
(ViT) and text (LSTM) in the runs' TensorBoard events. Two tiny real runs of ``train.py`` are made
once for the module (in parallel)."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import IMAGES, TENSORS, EventAccumulator

from lightning_modules.generation import TextGenerator
from lmvit.cli import ErrorPolicy
from lmvit.errors import ConfigError
from tests.helpers import ROOT, find_runs, load_metrics, run_train

pytestmark = pytest.mark.slow

FAST = ["debug=fast", "callbacks.progress_bar=null"]
RUNS = {
    "vit": ["model.embed_dim=32", "model.hidden_dim=32", "model.num_heads=2"],
    "lstm": [
        "model=lstm",
        "data=wikitext2_offline",
        "model.embedding_size=32",
        "model.hidden_size=32",
        "data.seq_len=32",
    ],
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")  # the LSTM's token-id cache, not the user's


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir, cache) -> dict[str, Path]:
    log_dir = tmp_path_factory.mktemp("eval_runs")
    env = {"OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cache)}
    with ThreadPoolExecutor(len(RUNS)) as pool:
        jobs = [
            pool.submit(run_train, *overrides, *FAST, log_dir=log_dir, data_dir=data_dir, env=env)
            for overrides in RUNS.values()
        ]
        for job in jobs:
            job.result()
    found = {load_metrics(run)["task"]: run for run in find_runs(log_dir)}
    assert set(found) == set(RUNS)
    return found


def _cli(script: str, *args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_eval_of_a_folder_equals_each_runs_test_numbers(runs, cache):
    """``eval.py run=<folder>``: every run's best checkpoint on its test split gives the numbers
    train.py recorded in metrics.json; one CSV with both runs; metrics.json untouched."""
    folder = Path(runs["vit"]).parents[2]
    before = {task: (run / "metrics.json").read_bytes() for task, run in runs.items()}
    proc = _cli("eval.py", f"run={folder}", cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (folder / "eval-best-test.csv").open() as f:
        rows = {row["task"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(runs)
    for task, run in runs.items():
        assert (run / "metrics.json").read_bytes() == before[task]
        recorded = load_metrics(run)["test"]
        evaluated = json.loads((run / "eval" / "best-test.json").read_text())
        assert evaluated["checkpoint"].endswith(f"best-epoch{load_metrics(run)['best']['epoch']:03d}.ckpt")
        assert set(evaluated["metrics"]) == set(recorded) and recorded
        for key, value in recorded.items():
            assert evaluated["metrics"][key] == pytest.approx(value, rel=1e-5)
            assert float(rows[task][key]) == pytest.approx(value, rel=1e-5)
            assert f"{value:.6g}" in proc.stdout  # the printed table


def test_eval_last_checkpoint_on_val_equals_the_last_epochs_val_numbers(runs):
    from eval import evaluate_run

    run = runs["vit"]
    result = evaluate_run(run, ckpt="last", split="val")
    final = load_metrics(run)["final"]
    for key in ("val/loss", "val/acc"):
        assert result["metrics"][key] == pytest.approx(final[key], rel=1e-5)
    assert (run / "eval" / "last-val.json").is_file()


def _eval_cfg(*overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("eval", overrides=list(overrides))


@pytest.mark.parametrize("case", ["no such run", "no checkpoint", "bad split", "missing file", "unknown key"])
def test_bad_input_is_one_line(case, runs, tmp_path, caplog):
    from eval import evaluate

    run = runs["lstm"]
    overrides = {
        "no such run": ([f"run={tmp_path / 'nope'}"], "does not exist"),
        "no checkpoint": ([f"run={run}", "ckpt=missing.ckpt"], "no checkpoint"),
        "bad split": ([f"run={run}", "split=train"], "must be one of val, test"),
        "missing file": ([f"run={run}", "data.test_file=nope.tokens"], "nope.tokens"),
        "unknown key": ([f"run={runs['vit']}", "data.test_file=x"], "has no setting 'test_file'"),
    }
    args, message = overrides[case]
    with caplog.at_level(logging.ERROR, logger="lmvit"), pytest.raises(SystemExit) as exit_info:
        with ErrorPolicy():
            evaluate(_eval_cfg(*args))
    assert exit_info.value.code in (1, 2)
    (record,) = caplog.records
    assert message in record.getMessage() and "\n" not in record.getMessage()
    if case != "missing file":
        assert exit_info.value.code == 2  # a bad setting


def test_generate_is_seeded_and_the_cli_prints_the_same_text(runs, cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    generator = TextGenerator.from_run(runs["lstm"])
    first = generator.generate("The history of", max_tokens=20, temperature=0.8, top_k=40, seed=1)
    again = TextGenerator.from_run(runs["lstm"]).generate("The history of", 20, 0.8, 40, seed=1)
    other = generator.generate("The history of", 20, 0.8, 40, seed=2)
    assert first.text == again.text and len(first.ids) == 20
    assert other.text != first.text
    proc = _cli(
        "generate.py",
        f"run={runs['lstm']}",
        "prompt=The history of",
        "max_tokens=20",
        "temperature=0.8",
        "top_k=40",
        "seed=1",
        cache=cache,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith(f"The history of {first.text}".strip())
    with pytest.raises(ConfigError, match="language model"):
        TextGenerator.from_run(runs["vit"])


def _tags(run: Path) -> dict:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={IMAGES: 0, TENSORS: 0})
    acc.Reload()
    return acc.Tags()


def test_default_callbacks_left_images_for_the_vit_and_text_for_the_lstm(runs):
    vit, lstm = _tags(runs["vit"]), _tags(runs["lstm"])
    expected = {"attention/layers", "attention/rollout", "confusion/matrix", "confusion/misclassified"}
    assert expected <= set(vit["images"])
    assert {"attention_distance/layer1", "attention_entropy/layer2_head1"} <= set(vit["scalars"])
    assert {"samples/1/text_summary", "samples/3/text_summary"} <= set(lstm["tensors"])
    assert not lstm["images"] and not [t for t in vit["tensors"] if t.startswith("samples/")]
    per_class = load_metrics(runs["vit"])["per_class"]
    assert sum(per_class["val/count"].values()) == 32  # debug=fast: 2 validation batches of 16
