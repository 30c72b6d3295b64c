"""Resume after SIGKILL, determinism, clear errors, divergence, sweeps that survive failures."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lmvit.config import validate
from lmvit.errors import ConfigError
from lmvit.io import atomic_write_json
from tests.helpers import ROOT, find_runs, load_metrics, run_train

# a small ViT with dropout (exercises the RNG), 10 batches an epoch, deterministic kernels
SMALL = [
    "model.num_layers=1",
    "model.embed_dim=64",
    "model.hidden_dim=128",
    "model.num_heads=4",
    "model.dropout=0.1",
    "data.train_subset=320",
    "data.batch_size=32",
    "trainer.max_epochs=3",
    "trainer.limit_val_batches=3",
    "trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.deterministic=true",
    "callbacks.progress_bar=null",
]
TIMING_KEYS = ("time/", "memory/")


def comparable(metrics: dict) -> dict:
    """The numbers of a metrics.json that must not depend on timing."""
    history = [{k: v for k, v in row.items() if not k.startswith(TIMING_KEYS)} for row in metrics["history"]]
    return {
        "final": metrics["final"],
        "best": metrics["best"],
        "test": metrics["test"],
        "history": history,
        "epochs": metrics["epochs"],
    }


@pytest.mark.slow
def test_run_killed_mid_epoch_and_resumed_matches_uninterrupted_run(tmp_path, data_dir):
    every = ("callbacks.periodic_checkpoint.every_n_train_steps=4", "callbacks.ema.decay=0.9")  # EMA resumes too
    run_train(*SMALL, *every, "data.num_workers=0", log_dir=tmp_path / "a", data_dir=data_dir)
    (uninterrupted,) = find_runs(tmp_path / "a")

    # step 17 is batch 7 of epoch 2; the last checkpoint on disk is step 16 (mid-epoch)
    kill = ["+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=17"]
    proc = run_train(
        *SMALL, *every, "data.num_workers=2", *kill, log_dir=tmp_path / "b", data_dir=data_dir, check=False
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "b" / "vit" / "runs").iterdir()
    assert load_metrics(run_dir)["status"] == "running"  # written at each epoch's end, not at the kill
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (ckpt["global_step"], ckpt["epoch"]) == (16, 1)

    # the killed run's TensorBoard events are readable up to its last logged step
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    steps = [e.step for e in events.Scalars("train/loss_step")]
    assert max(steps) >= 15

    run_train(f"resume={run_dir}", "++callbacks.kill.step=-1", log_dir=tmp_path / "b", data_dir=None)
    resumed = load_metrics(run_dir)
    assert resumed["status"] == "completed"
    assert "+callbacks.kill.step=17" in resumed["overrides"]  # the run's own overrides
    assert comparable(resumed) == comparable(load_metrics(uninterrupted))
    assert "val/acc_ema" in resumed["history"][-1]
    from lightning_modules.callbacks.ema import EMA

    ema_a, ema_b = (EMA.net_state_dict(r / "checkpoints" / "last.ckpt") for r in (uninterrupted, run_dir))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert list((run_dir / "resumes").iterdir())  # Hydra's files of the resumed session
    # the resumed session appends to the same TensorBoard run
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert max(e.step for e in events.Scalars("train/loss_step")) == 29


@pytest.mark.slow
def test_same_seed_gives_identical_numbers_whatever_the_workers(tmp_path, data_dir):
    run_train(
        "-m", "data.num_workers=0,2", *SMALL, "trainer.max_epochs=2", "test=false", log_dir=tmp_path, data_dir=data_dir
    )
    runs = find_runs(tmp_path)
    assert len(runs) == 2
    a, b = (comparable(load_metrics(r)) for r in runs)
    assert a == b
    assert a["history"][0]["train/loss"] != a["history"][1]["train/loss"]


def compose_with(*overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("optimizer.lr=0", "optimizer.lr=0: must be a number > 0"),
        ("optimizer.lr=-1e-3", "optimizer.lr=-0.001"),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1: must be a number >= 0"),
        ("optimizer=momentum optimizer.momentum=1.0", "optimizer.momentum=1.0: must be a number in [0, 1)"),
        ("model.embed_dim=100", "model.num_heads=8: must be a divisor of model.embed_dim=100"),
        ("model.patch_size=5", "model.patch_size=5: must be a divisor of model.image_size=32"),
        ("model.num_layers=0", "model.num_layers=0: must be an integer >= 1"),
        ("model.norm=middle", "model.norm='middle': must be one of pre, post"),
        ("model.attention=flash", "model.attention='flash': must be one of explicit, sdpa"),
        ("data.batch_size=0", "data.batch_size=0: must be an integer >= 1"),
        ("data.val_size=50000", "data.val_size=50000: must be smaller than the 50000 training images"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0: must be an integer >= 1"),
        ("data.data_dir=/no/such/dir", "data.data_dir='/no/such/dir': directory /no/such/dir does not exist"),
        ("optimizer.lr=abc", "optimizer.lr='abc': must be a number > 0"),
        ("model.compile_mode=fast", "model.compile_mode='fast': must be one of default, reduce-overhead"),
    ],
)
def test_bad_values_get_one_line_naming_setting_and_allowed(override, fragment, data_dir):
    cfg = compose_with(f"data.data_dir={data_dir}", *override.split())
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_language_model_settings_are_checked_too():
    from omegaconf import OmegaConf

    target = "datamodules.wikitext2.WikiText2DataModule"  # the class that owns the settings checks them
    cfg = OmegaConf.create({"data": {"_target_": target, "seq_len": 0}})
    with pytest.raises(ConfigError, match="data.seq_len=0: must be an integer >= 1"):
        validate(cfg)
    cfg = OmegaConf.create({"data": {"_target_": target, "tokenizer": "bpe"}})
    with pytest.raises(ConfigError, match="data.tokenizer='bpe': must be one of word, gpt2, npz"):
        validate(cfg)


@pytest.mark.slow
def test_bad_value_fails_fast_from_the_command_line(tmp_path, data_dir):
    proc = run_train("model.num_heads=7", log_dir=tmp_path, data_dir=data_dir, check=False)
    assert proc.returncode == 2
    err = proc.stdout + proc.stderr
    assert "Invalid setting model.num_heads=7: must be a divisor of model.embed_dim=256" in err
    assert "Traceback" not in err
    assert "Loading CIFAR-10" not in err  # failed before any data was loaded
    assert find_runs(tmp_path) == []  # a refused run leaves no run folder (a refused sweep job does: test_errors)


@pytest.mark.slow
def test_unknown_optimizer_lists_the_choices(tmp_path, data_dir):
    proc = run_train("optimizer=adamax", log_dir=tmp_path, data_dir=data_dir, check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert "optimizer=adamax: no such option in conf/optimizer/" in err
    assert len(err.strip().splitlines()) == 1, err  # one line, before Hydra composes anything
    for name in ("adam", "adamw", "sgd", "momentum"):
        assert name in err


@pytest.mark.slow
def test_divergence_stops_at_once_and_keeps_last_good_checkpoint(tmp_path, data_dir):
    proc = run_train(
        "debug=fast",
        "optimizer=sgd",
        "optimizer.lr=1e9",
        "trainer.max_epochs=3",
        "callbacks.periodic_checkpoint.every_n_train_steps=1",
        log_dir=tmp_path,
        data_dir=data_dir,
        check=False,
    )
    assert proc.returncode == 1
    err = proc.stdout + proc.stderr
    assert "train/loss is nan at step" in err or "train/loss is inf at step" in err
    assert "Traceback" not in err
    (run,) = find_runs(tmp_path)
    metrics = load_metrics(run)
    assert metrics["status"] == "diverged"
    assert "diverged" in metrics["error"]["message"]
    import torch

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_sweep_survives_a_failed_job_and_exits_nonzero_naming_it(tmp_path, data_dir):
    proc = run_train(
        "-m",
        "debug=fast",
        "trainer.max_epochs=1",
        "test=false",
        "model.num_layers=1,0",
        log_dir=tmp_path,
        data_dir=data_dir,
        check=False,
    )
    assert proc.returncode == 1
    (sweep,) = (tmp_path / "debug" / "multiruns").iterdir()
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["completed"] == 1 and summary["failed"] == ["model.num_layers=0,test=False,trainer.max_epochs=1"]
    assert "1 of 2 jobs failed" in proc.stderr + proc.stdout
    statuses = {r.name.split(",")[0]: load_metrics(r)["status"] for r in find_runs(sweep)}
    assert statuses == {"model.num_layers=1": "completed", "model.num_layers=0": "failed"}


@pytest.mark.slow
def test_resume_of_a_directory_that_is_not_a_run_is_a_clear_error(tmp_path):
    proc = run_train(f"resume={tmp_path}", log_dir=tmp_path, check=False)
    assert proc.returncode == 2
    assert f"{tmp_path}/config.yaml not found" in proc.stdout + proc.stderr


def test_atomic_write_never_leaves_half_a_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"status": "completed", "x": 1.0})

    real_write_text = Path.write_text

    def broken_write(self, text, *args, **kwargs):  # the disk fills half-way through the file
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", broken_write)
    with pytest.raises(OSError):
        atomic_write_json(path, {"status": "running"})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"status": "completed", "x": 1.0}
    assert os.listdir(tmp_path) == ["metrics.json"]
    assert math.isfinite(json.loads(path.read_text())["x"])


class _NaNAtStep(pl.LightningModule):
    """A linear model whose loss turns NaN from global step ``bad_step`` on."""

    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.bad_step = bad_step

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        return loss * float("nan") if self.global_step + 1 >= self.bad_step else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_deferred_divergence_check_still_guards_every_checkpoint(tmp_path):
    """With check_every_n_steps > 1 the guard reads its record at the next checkpoint, names the
    first bad step, and the checkpoint holding NaN weights is never written."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_modules.callbacks import FiniteLossGuard
    from lmvit.errors import DivergenceError

    ckpt = ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=5, save_top_k=-1, filename="step{step}", auto_insert_metric_name=False
    )
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FiniteLossGuard(check_every_n_steps=1000), ckpt],
    )
    data = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=2)
    with pytest.raises(DivergenceError, match=r"train/loss is nan at step 7 \(epoch 0, batch 6\)"):
        trainer.fit(_NaNAtStep(bad_step=7), data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step5.ckpt"]


def test_a_script_holding_loaders_with_workers_exits(data_dir):
    """Loader workers ignore SIGTERM (the training process decides when to stop); a script that
    still holds the loaders it iterated must exit all the same, not wait for them forever."""
    script = (
        "import sys\n"
        "from datamodules.cifar10 import CIFAR10DataModule\n"
        f"dm = CIFAR10DataModule({str(data_dir)!r}, batch_size=32, num_workers=1, seed=0, train_subset=256)\n"
        "dm.prepare_data(); dm.setup('fit')\n"
        "train, val = dm.train_dataloader(), dm.val_dataloader()\n"
        "batch, first = next(iter(train)), next(iter(val))\n"
        "print('batches', len(batch[1]), len(first[1]), flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "batches 32 32" in proc.stdout, proc.stderr[-2000:]
