"""Every entry point (``train.py``, ``eval.py``, ``generate.py``, ``python -m analysis``) as a new user
meets it: a bad input is one line and an exit code, a refused run leaves no folder, nothing earlier
is overwritten, and a default run prints what a user can act on (docs/troubleshooting.md)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lmvit.cli import QUIET_LOG_LINES, discard_refused_run, quiet_libraries
from lmvit.resolvers import MAX_DEFAULT_WORKERS, default_workers
from tests.helpers import ROOT, find_runs, load_metrics, run_train

TINY = {
    "vit": ["model.embed_dim=32", "model.hidden_dim=32", "model.num_heads=2"],
    "lstm": [
        "model=lstm",
        "data=wikitext2_offline",
        "model.embedding_size=32",
        "model.hidden_size=32",
        "data.seq_len=32",
    ],
}
# two epochs of a few batches, with the time estimate 2 steps past the warm-up (at step 7 of 16)
SHORT = ["debug=fast", "trainer.limit_train_batches=8", "callbacks.progress_log.estimate_after_steps=2"]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def _cli(*args: str, cache: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def _one_error_line(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The run exited ``code`` with no traceback and exactly one line saying what is wrong."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [ln for ln in out.splitlines() if "ERROR" in ln or ln.startswith("error:")]
    lines = [ln for ln in out.splitlines() if words[0] in ln]
    (line,) = lines
    assert errors in ([], [line]), errors  # no second error line (eval.py logs without a level)
    for word in words:
        assert word in line, line
    return line


# -- in-process: defaults, filters, clean-up -----------------------------------------------
@pytest.mark.parametrize("cores,workers", [(1, 0), (2, 0), (3, 2), (8, MAX_DEFAULT_WORKERS), (64, MAX_DEFAULT_WORKERS)])
def test_default_workers_leave_the_training_process_a_core(cores, workers, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert default_workers() == workers
    assert default_workers() < cores or cores == 1  # torch warns when workers exceed the cores


def test_the_default_config_uses_the_machines_workers():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train")
    assert cfg.data.num_workers == default_workers()  # the rule itself: the test above


def test_quiet_libraries_drops_only_the_named_notices(caplog):
    import torch.utils._pytree as pytree

    quiet_libraries()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_libraries()  # re-applied after simplefilter: filters are prepended
        pytree.LeafSpec()
        warnings.warn("another deprecation", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another deprecation"]
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=rank_zero.name):
        for line in (*QUIET_LOG_LINES, "GPU available: False, used: False"):
            rank_zero.info(line + " ...")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False ..."]


def test_a_refused_runs_folder_goes_but_never_a_checkpoint_or_an_older_file(tmp_path):
    started = time.time()
    fresh = tmp_path / "vit" / "runs" / "fresh"
    (fresh / ".hydra").mkdir(parents=True)
    (fresh / ".hydra" / "config.yaml").write_text("a: 1\n")
    (fresh / "train.log").write_text("")
    assert discard_refused_run(fresh, started)
    assert not any(tmp_path.iterdir())  # the empty runs/ and task folders went with it

    with_ckpt = tmp_path / "b"
    (with_ckpt / "checkpoints").mkdir(parents=True)
    (with_ckpt / "checkpoints" / "last.ckpt").write_bytes(b"x")
    other = tmp_path / "c"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    older = tmp_path / "d"
    older.mkdir()
    (older / "train.log").write_text("")
    os.utime(older / "train.log", (started - 60, started - 60))
    for folder in (with_ckpt, other, older):
        assert not discard_refused_run(folder, started)
        assert folder.is_dir()


def test_analysis_runs_are_never_resumes_or_reports(tmp_path):
    from analysis.runs import find_run_dirs

    run = tmp_path / "sweep" / "job0"
    for folder in (run, run / "resumes" / "2026-01-01_00-00-00" / ".hydra", run / "report"):
        folder.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text("task: vit\n")
    (run / "metrics.json").write_text('{"status": "completed", "task": "vit"}')
    (run / "resumes" / "2026-01-01_00-00-00" / ".hydra" / "config.yaml").write_text("task: vit\n")
    (run / "report" / "runs.csv").write_text("")
    assert find_run_dirs(str(tmp_path)) == [run.resolve()]


def test_make_train_says_how_long_and_the_quick_version():
    from lightning_modules.callbacks.progress_log import QUICK_VERSION

    target = (ROOT / "Makefile").read_text().split("\ntrain:", 1)[1].split("\n\n", 1)[0]
    run_line = next(i for i, ln in enumerate(target.splitlines()) if "train.py $(ARGS)" in ln)
    echoes = [ln for ln in target.splitlines()[:run_line] if "@echo" in ln]
    assert any("epochs" in ln for ln in echoes)
    assert any(QUICK_VERSION.replace("python", "$(PY)") in ln for ln in echoes)


# -- python -m analysis ----------------------------------------------------------------------
def test_analysis_of_a_folder_without_runs_is_an_error(tmp_path):
    proc = _cli("-m", "analysis", str(tmp_path))
    line = _one_error_line(proc, 2, "no runs in", str(tmp_path))
    assert line in proc.stderr
    assert not (tmp_path / "report").exists()


def test_analysis_of_runs_that_all_failed_says_so_in_one_line(tmp_path):
    for n in range(2):
        run = tmp_path / f"job{n}"
        run.mkdir()
        (run / "config.yaml").write_text(f"task: vit\nseed: {n}\n")
        (run / "metrics.json").write_text(json.dumps({"status": "failed", "seed": n, "error": {"message": "boom"}}))
    proc = _cli("-m", "analysis", str(tmp_path))
    line = _one_error_line(proc, 1, "none of the 2 runs completed (2 failed)")
    assert line in proc.stderr and proc.stdout.count("not reported (failed)") == 2


# -- train.py, eval.py, generate.py on real runs ------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, cache) -> dict:
    """A tiny ViT run and a tiny LSTM run (in parallel), with the ViT run's console output."""
    log_dir = tmp_path_factory.mktemp("entry_runs")
    env = {"OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cache)}
    with ThreadPoolExecutor(2) as pool:
        jobs = {
            task: pool.submit(run_train, *o, *SHORT, log_dir=log_dir, data_dir=data_dir, env=env)
            for task, o in TINY.items()
        }
        procs = {task: job.result() for task, job in jobs.items()}
    runs = {load_metrics(run)["task"]: run for run in find_runs(log_dir)}
    assert set(runs) == set(TINY)
    return {"runs": runs, "output": procs["vit"].stdout + procs["vit"].stderr}


@pytest.mark.slow
def test_a_short_run_prints_progress_the_run_and_results_only(trained):
    out = trained["output"]
    noises = (
        "worker processes in total",
        "LeafSpec",
        "Tip:",
        "multiple `ModelCheckpoint`",
        "it/s",
        "├──",
        "model summary",
    )
    for noise in noises:
        assert noise not in out
    run = trained["runs"]["vit"]
    assert f"Run directory: {run}" in out and f"Config: {run / 'config.yaml'}" in out
    assert "Training: 2 epochs of 8 batches (16 optimizer steps in all); how long" in out
    assert "epoch 2/2 done" in out and "test/acc" in out
    assert len(out.splitlines()) < 60  # 217 lines before (docs/troubleshooting.md)
    # the estimate at step WARMUP_STEPS + 2 = 7: the seconds a step times the 9 steps left
    (m,) = re.findall(r"2 epochs \(16 steps\), about (\d+) s at the current speed \((\d+\.\d+) s a step\)", out)
    assert int(m[0]) == pytest.approx(9 * float(m[1]), abs=0.5 + 9 * 0.005)


@pytest.mark.slow
def test_a_model_with_the_other_tasks_data_is_one_line_and_leaves_no_folder(tmp_path, data_dir):
    proc = run_train("model=lstm", "data=cifar10", log_dir=tmp_path, data_dir=data_dir, check=False, timeout=120)
    _one_error_line(proc, 2, "model=lstm", "LanguageModel", "CIFAR10DataModule", "data=wikitext2")
    assert _files(tmp_path) == [] and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_resume_from_a_damaged_checkpoint_offers_an_earlier_one_and_changes_nothing(trained, tmp_path, data_dir):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained["runs"]["vit"], run)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])  # cut short, as by a full disk or a killed copy
    before = {p: p.read_bytes() for p in _files(run)}
    proc = run_train(f"resume={run}", log_dir=tmp_path / "logs", check=False, timeout=120)
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    _one_error_line(proc, 2, f"Checkpoint {last} is damaged", "truncated", f"resume={run} ckpt_path={best}")
    assert {p: p.read_bytes() for p in _files(run)} == before  # metrics.json, checkpoints: untouched
    assert not (run / "resumes").exists()
    assert not (tmp_path / "logs").exists() or _files(tmp_path / "logs") == []


@pytest.mark.slow
def test_eval_checks_data_overrides_as_train_does(trained):
    run = trained["runs"]["vit"]
    for value, allowed in (("abc", "must be an integer"), ("0", "must be an integer >= 1")):
        proc = _cli("eval.py", f"run={run}", f"data.batch_size={value}")
        _one_error_line(proc, 2, "Invalid setting data.batch_size=", allowed)
    assert not (run / "eval").exists()


@pytest.mark.slow
def test_eval_keeps_earlier_evaluations_and_takes_a_string(trained, tmp_path):
    import shutil

    from eval import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(trained["runs"]["vit"], run)
    first = evaluate_run(str(run))  # a str, as the README shows
    second = evaluate_run(run)
    files = sorted(p.name for p in (run / "eval").iterdir())
    assert files == ["best-test-2.json", "best-test.json"]
    assert json.loads((run / "eval" / "best-test.json").read_text())["time"] == first["time"]
    assert second["metrics"] == first["metrics"]
    evaluate_run(run, overwrite=True)
    assert sorted(p.name for p in (run / "eval").iterdir()) == files


@pytest.mark.slow
def test_eval_and_generate_name_a_damaged_checkpoint_and_an_intact_one(trained, tmp_path, cache):
    import shutil

    for script, task in (("eval.py", "vit"), ("generate.py", "lstm")):
        run = tmp_path / task
        shutil.copytree(trained["runs"][task], run)
        last = run / "checkpoints" / "last.ckpt"
        last.write_bytes(b"")
        best = next((run / "checkpoints").glob("best-*.ckpt"))
        proc = _cli(script, f"run={run}", "ckpt=last", cache=cache)
        _one_error_line(proc, 2, f"Checkpoint {last} is damaged", "empty", f"python {script} run={run} ckpt={best}")
        assert not (run / "eval").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,words",
    [
        (["run=/no/such/run"], ["Invalid setting run='/no/such/run'", "does not exist"]),
        (["ckpt=missing.ckpt"], ["Invalid setting ckpt='missing.ckpt'", "checkpoints there:"]),
        (["data.tokenizer_dir=/no/such/folder"], ["data.tokenizer_dir='/no/such/folder'", "no such folder"]),
    ],
)
def test_generate_bad_input_is_one_line(args, words, trained, cache):
    run = trained["runs"]["lstm"]
    proc = _cli("generate.py", *([f"run={run}"] if not args[0].startswith("run=") else []), *args, cache=cache)
    _one_error_line(proc, 2, *words)
