"""Every error a user can fix prints as one line naming the setting, file or folder (exit 2 for a
bad setting), through ``train.py`` as users run it, before any data is loaded."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from lmvit import errors
from lmvit.cli import ErrorPolicy, user_error
from lmvit.config import check_types
from tests.helpers import find_runs, load_metrics, run_train

LSTM = ["model=lstm", "data=wikitext2_offline"]

CASES = [
    # (overrides, exit code, what the one line must say)
    (["model=lstm", "data.train_file=nope.tokens"], 1, "WikiText-2 files missing in"),
    (["scheduler=cosine", "scheduler.warmup_fraction=2"], 2, "scheduler.warmup_fraction=2: must be a number in [0, 1)"),
    (
        [*LSTM, "model.embeddings_path=/no/such/embeddings.npz"],
        2,
        "model.embeddings_path='/no/such/embeddings.npz': no such file",
    ),
    (
        [*LSTM, "data.tokenizer=gpt2", "data.tokenizer_dir=/no/such/folder"],
        2,
        "data.tokenizer_dir='/no/such/folder': no such folder",
    ),
    (["data.train_subset=0"], 2, "data.train_subset=0: must be an integer >= 1"),
    (["trainer.max_epochs=ten"], 2, "trainer.max_epochs='ten': must be an integer"),
    (["scheduler=cosine", "scheduler.warmup_fraction=abc"], 2, "scheduler.warmup_fraction='abc': must be a number"),
    (["model.num_layers=2.5"], 2, "model.num_layers=2.5: must be an integer"),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides,code,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_user_errors_are_one_line(overrides, code, message, tmp_path, data_dir):
    proc = run_train(*overrides, log_dir=tmp_path, data_dir=data_dir, check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-3000:]
    assert message in out
    assert "Traceback" not in out and "HYDRA_FULL_ERROR=1 for a complete" not in out
    (line,) = [ln for ln in out.splitlines() if "ERROR" in ln]  # exactly one line says what is wrong
    assert message in line
    assert "Loading CIFAR-10" not in out  # failed before any data was loaded
    assert find_runs(tmp_path) == [] and not any(p.is_file() for p in tmp_path.rglob("*"))  # no run folder


@pytest.mark.slow
def test_a_refused_sweep_job_is_recorded(tmp_path, data_dir):
    """In a sweep the refused job keeps its folder: its metrics.json names the error for the summary."""
    proc = run_train("-m", "data.train_subset=0", log_dir=tmp_path, data_dir=data_dir, check=False, timeout=120)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    (run,) = find_runs(tmp_path)
    metrics = load_metrics(run)
    assert metrics["status"] == "failed" and "data.train_subset=0" in metrics["error"]["message"]


def test_error_types_are_defined_once():
    from datamodules import cifar10, wikitext2
    from lmvit import config

    assert cifar10.DatasetError is wikitext2.DatasetError is errors.DatasetError
    assert config.ConfigError is errors.ConfigError
    assert errors.ConfigError.exit_code == 2 and errors.DatasetError.exit_code == 1
    assert all(
        issubclass(e, errors.UserError) for e in (errors.ConfigError, errors.DatasetError, errors.DivergenceError)
    )


def test_wrapped_user_error_is_found_and_exits_with_its_code():
    try:
        try:
            raise errors.DatasetError("file x missing")
        except errors.DatasetError as inner:
            raise RuntimeError("Error in call to target 'datamodules...'") from inner
    except RuntimeError as outer:
        assert isinstance(user_error(outer), errors.DatasetError)
    with pytest.raises(SystemExit) as info, ErrorPolicy(multirun=False):
        raise errors.ConfigError("Invalid setting x=1")
    assert info.value.code == 2
    with ErrorPolicy(multirun=True):  # a sweep job's error is recorded and swallowed
        raise errors.DatasetError("gone")
    with pytest.raises(ValueError), ErrorPolicy(multirun=False):  # not the user's: traceback kept
        raise ValueError("a bug")


@pytest.mark.parametrize(
    "key,value,ok",
    [
        ("trainer.max_epochs", "ten", False),
        ("trainer.max_epochs", 3, True),
        ("trainer.max_epochs", 3.5, False),
        ("optimizer.lr", 1, True),
        ("optimizer.lr", "fast", False),
        ("test", "maybe", False),
        ("test", False, True),
        ("trainer.devices", "auto", True),  # Lightning's own words are allowed where it takes them
        ("label", 7, True),  # strings take anything
    ],
)
def test_type_check_against_the_default_config(key, value, ok):
    reference = OmegaConf.create(
        {"trainer": {"max_epochs": 10, "devices": 1}, "optimizer": {"lr": 3e-4}, "test": True, "label": None}
    )
    cfg = OmegaConf.merge(reference, OmegaConf.from_dotlist([f"{key}={value}"]))
    if ok:
        check_types(cfg, reference)
    else:
        with pytest.raises(errors.ConfigError, match=f"Invalid setting {key}="):
            check_types(cfg, reference)
