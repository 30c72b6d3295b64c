"""Every error a user can fix prints as one line naming the setting, file or folder (exit 2 for a
bad setting), through ``train.py`` as users run it, before any data is loaded."""

from __future__ import annotations

import json
import os

import pytest
from omegaconf import OmegaConf

from datamodules.cifar10 import CIFAR10DataModule
from lightning_modules.callbacks.ema import EMA
from lightning_modules.nets.vit import VisionTransformer
from lightning_modules.vit_classifier import ViTClassifier
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


def load_metrics_file(path):
    return json.loads(path.read_text())


def _raised(make):
    try:
        make()
    except BaseException as exc:  # noqa: BLE001 - the test inspects what was raised
        return exc
    raise AssertionError("nothing raised")


def test_a_failure_of_the_machine_is_told_from_a_failure_of_the_run(tmp_path):
    """A full disk, an I/O error or no memory left (also wrapped, or raised while handling another
    error) is the machine's: the run is ``crashed`` and a rerun continues it. A missing file, a bug
    or a diverged loss is the run's own: ``failed`` / ``diverged``."""
    import errno

    from lightning_modules.callbacks.run_summary import RunSummary

    def full_disk():
        with open("/dev/full", "wb") as f:  # the kernel's always-full device: a real ENOSPC
            f.write(b"x" * 65536)
            f.flush()

    def wrapped():
        try:
            full_disk()
        except OSError as inner:
            raise RuntimeError("saving the checkpoint failed") from inner

    def while_handling():  # the error of a clean-up that ran into the full disk's error
        try:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        except OSError:
            raise ValueError("closing the log failed")  # noqa: B904 - the context chain is the point

    def no_memory():
        raise MemoryError

    def missing():
        open(tmp_path / "no-such-file")

    for make, machine in ((full_disk, True), (wrapped, True), (while_handling, True), (no_memory, True),
                          (missing, False), (lambda: 1 / 0, False)):  # fmt: skip
        exc = _raised(make)
        assert (errors.machine_failure(exc) is not None) is machine, repr(exc)
    for exc, status in ((_raised(full_disk), "crashed"), (_raised(missing), "failed"),
                        (errors.DivergenceError("loss is nan"), "diverged")):  # fmt: skip
        summary = RunSummary(str(tmp_path / f"{status}.json"), task="vit", monitor="val/acc")
        summary.fail(exc)
        assert load_metrics_file(tmp_path / f"{status}.json")["status"] == status


def test_a_crashed_sweep_job_resumes_unless_its_last_checkpoint_is_damaged(tmp_path):
    import torch

    from lmvit.resume import sweep_job_plan

    job = tmp_path / "job"
    (job / "checkpoints").mkdir(parents=True)
    (job / "config.yaml").write_text("test: false\n")
    last = job / "checkpoints" / "last.ckpt"
    torch.save({"step": 16}, last)
    for status, plan in (("crashed", "resume"), ("interrupted", "resume"), ("failed", "skip"), ("completed", "skip")):
        (job / "metrics.json").write_text(json.dumps({"status": status}))
        assert sweep_job_plan(job, rerun_failed=False) == plan, status
    (job / "metrics.json").write_text(json.dumps({"status": "crashed"}))
    last.write_bytes(last.read_bytes()[:100])  # the write the full disk cut short
    assert sweep_job_plan(job, rerun_failed=False) == "new"


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
        # a count where a debug run set one, a fraction asked for (eval.py's "whole split"): its rule decides
        ("trainer.limit_test_batches", 1.0, True),
    ],
)
def test_type_check_against_the_default_config(key, value, ok):
    reference = OmegaConf.create(
        {
            "trainer": {"max_epochs": 10, "devices": 1, "limit_test_batches": 2},
            "optimizer": {"lr": 3e-4},
            "test": True,
            "label": None,
        }
    )
    cfg = OmegaConf.merge(reference, OmegaConf.from_dotlist([f"{key}={value}"]))
    if ok:
        check_types(cfg, reference)
    else:
        with pytest.raises(errors.ConfigError, match=f"Invalid setting {key}="):
            check_types(cfg, reference)


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from tests.helpers import ROOT

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"data.data_dir={ROOT}", *overrides])


@pytest.mark.parametrize(
    "override,build",
    [
        ("model.norm=mid", lambda: VisionTransformer(norm="mid")),
        ("model.num_heads=7", lambda: VisionTransformer(embed_dim=256, num_heads=7)),
        ("model.patch_size=3", lambda: VisionTransformer(patch_size=3)),
        ("model.label_smoothing=1.5", lambda: ViTClassifier(label_smoothing=1.5)),
        (
            "data.augment=randaugment data.device_augment=true",
            lambda: CIFAR10DataModule(augment="randaugment", device_augment=True),
        ),
        ("callbacks.ema.decay=1.0", lambda: EMA(decay=1.0)),
    ],
)
def test_a_setting_is_checked_by_its_class_once(override, build):
    """The config check before any data is loaded and the constructor say the same line: one rule,
    written in the class that owns the setting (lmvit/config.py holds none of them)."""
    from lmvit.config import LIGHTNING_RULES, validate

    with pytest.raises(errors.ConfigError) as from_config:
        validate(_compose(*override.split()))
    with pytest.raises(errors.ConfigError) as from_class:
        build()
    assert str(from_config.value) == str(from_class.value)
    assert override.split("=")[0] in str(from_config.value) and "\n" not in str(from_config.value)
    assert all(k.startswith(("trainer.", "callbacks.periodic_checkpoint.")) for k in LIGHTNING_RULES)


def test_heads_message_names_both_settings():
    from lmvit.config import validate

    with pytest.raises(errors.ConfigError, match=r"model.num_heads=7: must be a divisor of model.embed_dim=256"):
        validate(_compose("model.num_heads=7"))


@pytest.mark.parametrize("model,data", [("vit", "wikitext2_offline"), ("lstm", "cifar10")])
def test_a_model_with_the_other_tasks_data_is_one_line(model, data):
    from lmvit.config import validate

    with pytest.raises(errors.ConfigError) as info:
        validate(_compose(f"model={model}", f"data={data}"))
    message = str(info.value)
    assert "reads batches of" in message and "pick the data module of the model's task" in message
    assert "\n" not in message
    validate(_compose(f"model={model}"))  # with its own data module: fine
