"""The Lightning/Hydra conventions users reach for: checkpoints that load the usual way, debug
presets, loggers, the learning rate always logged, progress lines without a terminal, HParams rows
from the start with their status."""

from __future__ import annotations

import csv
from functools import partial

import pytest
import torch
from omegaconf import OmegaConf

from datamodules.wikitext2 import WikiText2DataModule
from lightning_modules.language_model import LanguageModel
from lightning_modules.tensorboard import TensorBoardLogger
from lightning_modules.vit_classifier import ViTClassifier
from lmvit.config import run_hparams
from tests.helpers import assert_close_rel, find_runs, hparams_view, load_metrics, quiet_trainer, run_train

TINY_VIT = [
    "model.embed_dim=32",
    "model.hidden_dim=64",
    "model.num_heads=2",
    "model.num_layers=1",
    "data.train_subset=512",
    "callbacks.progress_bar=null",
]
TINY_LSTM = [
    "model=lstm",
    "data=wikitext2_offline",
    "model.embedding_size=16",
    "model.hidden_size=16",
    "data.seq_len=16",
    "callbacks.progress_bar=null",
]


# -- checkpoints load the usual way --------------------------------------------------------------
def _fit_and_save(model, datamodule, path):
    trainer = quiet_trainer(max_steps=2, limit_val_batches=1)
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(path)


def test_vit_checkpoint_loads_with_no_other_argument(tmp_path, data_dir):
    from datamodules.cifar10 import CIFAR10DataModule

    torch.manual_seed(0)
    model = ViTClassifier(
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        embed_dim=32,
        hidden_dim=64,
        num_heads=2,
        num_layers=2,
        norm="post",
        dropout=0.1,
    )
    dm = CIFAR10DataModule(str(data_dir), batch_size=16, num_workers=0, train_subset=64, val_size=32)
    _fit_and_save(model, dm, tmp_path / "vit.ckpt")
    loaded = ViTClassifier.load_from_checkpoint(tmp_path / "vit.ckpt")
    assert loaded.hparams.norm == "post" and loaded.hparams.num_layers == 2
    images = torch.randn(3, 3, 32, 32)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert_close_rel(loaded(images), model(images))
    with pytest.raises(ValueError, match="no optimizer: it was loaded for evaluation"):
        loaded.configure_optimizers()


def test_lstm_checkpoint_loads_with_no_other_argument(tmp_path, data_dir):
    torch.manual_seed(0)
    model = LanguageModel(optimizer=partial(torch.optim.Adam, lr=1e-3), embedding_size=16, hidden_size=16)
    dm = WikiText2DataModule(
        str(data_dir),
        cache_dir=str(tmp_path / "cache"),
        seq_len=16,
        batch_size=4,
        train_file="wiki.valid.tokens",
        val_file="wiki.test.tokens",
        test_file="wiki.test.tokens",
    )
    _fit_and_save(model, dm, tmp_path / "lstm.ckpt")
    loaded = LanguageModel.load_from_checkpoint(tmp_path / "lstm.ckpt")  # vocab size from the hparams
    assert loaded.net.vocab_size == model.net.vocab_size == dm.vocab_size
    tokens = torch.randint(0, dm.vocab_size, (2, 9))
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert_close_rel(loaded(tokens), model(tokens))


# -- debug presets -------------------------------------------------------------------------------
@pytest.mark.slow
def test_debug_overfit_drives_the_loss_down_on_two_batches(tmp_path, data_dir):
    run_train(
        "debug=overfit",
        *TINY_VIT,
        "model.embed_dim=64",
        "model.hidden_dim=128",
        "model.num_heads=4",
        "trainer.max_epochs=30",
        "optimizer.lr=2e-3",
        "test=false",
        log_dir=tmp_path,
        data_dir=data_dir,
    )
    (run,) = find_runs(tmp_path)
    assert run.relative_to(tmp_path).parts[:2] == ("debug", "vit")  # debug runs: <log_dir>/debug/...
    history = load_metrics(run)["history"]
    assert len(history) == 30 and history[0]["step"] == 2  # 2 batches an epoch, the same ones
    losses = [row["train/loss"] for row in history]
    assert min(losses[-5:]) < 0.2 * losses[0], losses  # memorised: from ~2.4 (chance) to under 0.5
    assert max(row["train/acc"] for row in history[-5:]) >= 0.85


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["profiler", "limit"])
def test_debug_presets_run_under_logs_debug(preset, tmp_path, data_dir):
    run_train(
        f"debug={preset}",
        *TINY_VIT,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        log_dir=tmp_path,
        data_dir=data_dir,
    )
    (run,) = find_runs(tmp_path)
    assert run.relative_to(tmp_path).parts[0] == "debug"
    assert load_metrics(run)["status"] == "completed"
    if preset == "profiler":
        report = (run / "fit-profile.txt").read_text()
        assert "run_training_batch" in report and "Mean duration" in report


# -- loggers, lr, progress -----------------------------------------------------------------------
@pytest.mark.slow
def test_csv_and_tensorboard_side_by_side_log_lr_and_progress_lines(tmp_path, data_dir):
    proc = run_train(
        "debug=fast",
        *TINY_VIT,
        "logger=many",
        "callbacks.progress_log.every_n_steps=2",
        log_dir=tmp_path,
        data_dir=data_dir,
    )
    (run,) = find_runs(tmp_path)
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    lrs = [float(r["lr-AdamW"]) for r in rows if r.get("lr-AdamW")]
    assert lrs and all(lr == pytest.approx(3e-4) for lr in lrs)  # logged without any schedule
    assert any(r.get("val/acc") for r in rows)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # no terminal attached (captured output): one progress line per epoch and every 2 steps
    out = proc.stdout + proc.stderr
    epoch_lines = [ln for ln in out.splitlines() if "lmvit.progress" in ln and " done " in ln]
    assert len(epoch_lines) == 2 and "val/acc" in epoch_lines[0] and "ETA" in epoch_lines[0]
    assert "epoch 1/2  batch 2/3  step 2  train/loss_step" in out
    assert "epoch 2/2 done" in (run / "train.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("logger", ["~logger", "logger=null", "logger=wandb"])
def test_no_logger_or_offline_wandb(logger, tmp_path, data_dir):
    run_train(
        "debug=fast",
        *TINY_VIT,
        logger,
        "trainer.max_epochs=1",
        log_dir=tmp_path,
        data_dir=data_dir,
        env={"WANDB_SILENT": "true"},
    )
    (run,) = find_runs(tmp_path)
    assert load_metrics(run)["status"] == "completed"
    assert not (run / "tensorboard").exists()
    if logger == "logger=wandb":  # offline: written locally, no network needed
        (offline,) = (run / "wandb").glob("offline-run-*")
        assert list(offline.glob("run-*.wandb"))


# -- HParams: rows from the start, with their status ---------------------------------------------
def test_hparams_session_starts_with_the_run_and_ends_with_its_status(tmp_path):
    from tensorboard.plugins.hparams import api_pb2

    cfg = OmegaConf.create(
        {
            "task": "vit",
            "seed": 3,
            "label": "ViT 2L",
            "optimizer": {"_target_": "torch.optim.AdamW", "lr": 3e-4, "weight_decay": 5e-4},
            "model": {"num_layers": 2, "norm": "pre", "embed_dim": 256},
            "data": {"batch_size": 128, "data_dir": "/somewhere", "num_workers": 4},
            "callbacks": {"model_checkpoint": {"dirpath": "/runs/x/checkpoints"}},
            "paths": {"output_dir": "/runs/x"},
            "trainer": {"max_epochs": 10, "default_root_dir": "/runs/x"},
        }
    )
    hparams = run_hparams(cfg, {"optimizer": "adamw"})
    assert list(hparams)[:7] == ["optimizer", "lr", "weight_decay", "layers", "norm", "seed", "label"]
    assert hparams["optimizer"] == "adamw" and hparams["layers"] == 2 and hparams["lr"] == 3e-4
    assert "model.embed_dim" in hparams and "data.batch_size" in hparams
    assert not [k for k in hparams if "dir" in k or k.startswith(("callbacks", "paths")) or "num_workers" in k]

    for name, status in [("running", None), ("failed", "failed"), ("done", "success")]:
        logger = TensorBoardLogger(tmp_path, name=name, version="")
        logger.log_hyperparams(hparams)
        logger.log_hyperparams({"net_kwarg": 1})  # Lightning's own call at fit start keeps the session
        logger.log_metrics({"val/acc": 0.5}, step=1)
        if status:
            logger.finalize(status)
        else:
            logger.experiment.flush()
    _experiment, groups = hparams_view(tmp_path)
    statuses = {g.name.split("/")[0]: g.sessions[0].status for g in groups.session_groups}
    assert statuses == {
        "running": api_pb2.STATUS_UNKNOWN,
        "failed": api_pb2.STATUS_FAILURE,
        "done": api_pb2.STATUS_SUCCESS,
    }
    assert {"optimizer", "lr", "layers"} <= {h.name for h in _experiment.hparam_infos}
    assert "net_kwarg" not in {h.name for h in _experiment.hparam_infos}
