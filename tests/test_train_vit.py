"""End to end: train.py as users run it (subprocesses, real CIFAR-10)."""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lightning_modules.vit_classifier import ViTClassifier
from lmvit.hardware import auto_precision
from tests.helpers import ROOT, find_runs, load_metrics, run_train


def test_composed_config_instantiates_the_lightning_module():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model.num_layers=4", "model.norm=post", "optimizer=momentum"])
    model = instantiate(cfg.model)
    assert isinstance(model, ViTClassifier)
    assert model.parameter_counts() == {"learnable": 2_140_938, "frozen": 0}
    assert all(b.norm == "post" for b in model.net.blocks)
    optimizer = model.configure_optimizers()
    assert type(optimizer).__name__ == "SGD"
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (3e-4, 0.9, 5e-4)


def test_optimizer_group_is_faithful_to_the_study():
    expected = {
        "adam": ("Adam", 0.0, None),
        "adamw": ("AdamW", 5e-4, None),
        "sgd": ("SGD", 5e-4, 0.0),
        "momentum": ("SGD", 5e-4, 0.9),
    }
    for name, (cls, wd, momentum) in expected.items():
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[f"optimizer={name}"])
        model = instantiate(cfg.model)
        group = model.configure_optimizers().param_groups[0]
        assert type(model.configure_optimizers()).__name__ == cls
        assert group["lr"] == 3e-4 and group["weight_decay"] == wd
        if momentum is not None:
            assert group["momentum"] == momentum


@pytest.mark.slow
def test_fast_run_writes_events_checkpoints_and_metrics(tmp_path, data_dir):
    run_train("debug=fast", log_dir=tmp_path, data_dir=data_dir)
    (run,) = find_runs(tmp_path)
    assert run.parent.name == "runs" and run.parent.parent.name == "vit"
    metrics = load_metrics(run)
    assert metrics["status"] == "completed" and metrics["task"] == "vit"
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
    assert metrics["params"] == {"learnable": 1_086_730, "frozen": 0}
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert math.isfinite(metrics["final"][key]), key
    assert set(metrics["test"]) == {"test/loss", "test/acc"}
    assert metrics["train_seconds"] > 0 and metrics["peak_rss_mb"] > 0
    # the CPU setting it ran under (tests/test_cpu_setting.py): the auto precision, eager, fused AdamW
    assert metrics["precision"] == auto_precision("auto", torch.cuda.is_available())[0]
    assert metrics["compile"] == "off" and metrics["optimizer_kernel"] == "fused"
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(g["fused"] for g in saved["optimizer_states"][0]["param_groups"])
    assert metrics["best"]["val/acc"] == max(r["val/acc"] for r in metrics["history"])
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    assert (run / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()


@pytest.mark.slow
def test_optimizer_sweep_gives_one_directory_per_job(tmp_path, data_dir):
    run_train(
        "-m",
        "optimizer=adam,adamw,sgd,momentum",
        "debug=fast",
        "trainer.max_epochs=1",
        "test=false",
        log_dir=tmp_path,
        data_dir=data_dir,
    )
    runs = find_runs(tmp_path)
    # directories are named after the job's overrides
    names = sorted(r.name.split(",")[0] for r in runs)
    assert names == ["optimizer=adam", "optimizer=adamw", "optimizer=momentum", "optimizer=sgd"]
    assert len({r.parent for r in runs}) == 1  # one sweep directory
    for run in runs:
        metrics = load_metrics(run)
        assert metrics["status"] == "completed"
        assert run.name.split(",")[0] in metrics["overrides"]


@pytest.mark.slow
def test_short_real_run_lowers_the_training_loss(tmp_path, data_dir):
    run_train(
        "data.train_subset=256",
        "data.batch_size=64",
        "data.num_workers=0",
        "trainer.max_epochs=5",
        "trainer.limit_val_batches=2",
        "test=false",
        "optimizer.lr=1e-3",
        log_dir=tmp_path,
        data_dir=data_dir,
    )
    (run,) = find_runs(tmp_path)
    losses = [row["train/loss"] for row in load_metrics(run)["history"]]
    assert len(losses) == 5
    assert losses[-1] < losses[0] - 0.1, losses
