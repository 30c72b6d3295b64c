"""Experiment presets compose to the study's configurations; the overfitting switches compose.

Config composition only (Hydra's compose API, no training): fast.
"""

from __future__ import annotations

import fnmatch

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor

from analysis.study import TABLE1_ROWS, TABLE2_ROWS
from tests.helpers import ROOT

CONF = str(ROOT / "conf")
OPTIMIZERS = {  # preset name -> (class, momentum, weight decay), from the study's settings
    "adam": (torch.optim.Adam, None, 0.0),
    "adamw": (torch.optim.AdamW, None, 5e-4),
    "sgd": (torch.optim.SGD, 0.0, 5e-4),
    "momentum": (torch.optim.SGD, 0.9, 5e-4),
}


@pytest.fixture(scope="module")
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        yield GlobalHydra.instance().config_loader()
    GlobalHydra.instance().clear()


def experiment_options(loader, pattern: str) -> list[str]:
    """What ``experiment=glob(<pattern>)`` sweeps over (the same listing Hydra's glob filters)."""
    return [o for o in loader.get_group_options("experiment") if fnmatch.fnmatch(o, pattern)]


def assert_study_optimizer(cfg, name: str, lr: float) -> None:
    """The composed optimizer, built, is the study's ``name`` with its lr, momentum, weight decay."""
    cls, momentum, weight_decay = OPTIMIZERS[name]
    built = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    assert type(built) is cls
    group = built.param_groups[0]
    assert group["lr"] == pytest.approx(lr) and group["weight_decay"] == pytest.approx(weight_decay)
    if momentum is not None:
        assert group["momentum"] == pytest.approx(momentum)


def test_table2_glob_sweeps_the_seven_configurations(hydra_conf):
    options = experiment_options(hydra_conf, "table2_*")
    assert len(options) == 7
    assert not any("50" in o for o in options), "the 50-epoch run must stay out of the table sweep"


@pytest.mark.parametrize("number, norm, layers, optimizer", [r[:4] for r in TABLE2_ROWS])
def test_table2_preset_is_the_study_configuration(hydra_conf, number, norm, layers, optimizer):
    (name,) = experiment_options(hydra_conf, f"table2_{number}_*")
    cfg = compose("train", overrides=[f"experiment={name}"])
    assert cfg.study_config == f"table2/{number}"
    assert cfg.label and isinstance(cfg.label, str)
    assert cfg.task == "vit" and cfg.monitor.metric == "val/acc"
    assert (cfg.model.num_layers, cfg.model.norm) == (layers, norm)
    assert (cfg.model.embed_dim, cfg.model.hidden_dim, cfg.model.num_heads, cfg.model.patch_size) == (256, 512, 8, 4)
    assert cfg.trainer.max_epochs == 10 and cfg.seed == 42 and cfg.data.batch_size == 128
    assert_study_optimizer(cfg, optimizer, lr=3e-4)


def test_table1_glob_sweeps_the_six_configurations(hydra_conf):
    assert len(experiment_options(hydra_conf, "table1_*")) == 6


@pytest.mark.parametrize("number, row", list(enumerate(TABLE1_ROWS, start=1)))
def test_table1_preset_is_the_study_configuration(hydra_conf, number, row):
    optimizer, layers, epochs = row[:3]
    (name,) = experiment_options(hydra_conf, f"table1_{number}_*")
    cfg = compose("train", overrides=[f"experiment={name}"])
    assert cfg.study_config == f"table1/{number}" and cfg.label
    assert cfg.task == "lstm" and (cfg.monitor.metric, cfg.monitor.mode) == ("val/ppl", "min")
    assert cfg.model.num_layers == layers and cfg.trainer.max_epochs == epochs
    assert (cfg.model.embedding_size, cfg.model.hidden_size, cfg.data.seq_len) == (768, 512, 256)
    assert cfg.data.batch_size == 16 and cfg.seed == 42
    assert_study_optimizer(cfg, optimizer, lr=1e-3)


def test_fifty_epoch_preset(hydra_conf):
    cfg = compose("train", overrides=["experiment=extra/table2_6_50ep"])
    assert cfg.trainer.max_epochs == 50 and cfg.study_config == "table2/6@50"
    assert (cfg.model.num_layers, cfg.model.norm, cfg.optimizer._target_) == (6, "pre", "torch.optim.AdamW")


def test_debug_still_shortens_a_preset(hydra_conf):
    cfg = compose("train", overrides=["experiment=table2_6_adamw_6l", "debug=fast"])
    assert cfg.trainer.max_epochs == 2 and cfg.model.num_layers == 6


def test_early_stopping_is_off_by_default_and_follows_the_monitor(hydra_conf):
    assert compose("train").callbacks.early_stopping is None
    cfg = compose("train", overrides=["early_stopping=monitor", "callbacks.early_stopping.patience=5"])
    stopper = instantiate(cfg.callbacks.early_stopping)
    assert isinstance(stopper, EarlyStopping)
    assert (stopper.monitor, stopper.mode, stopper.patience) == ("val/acc", "max", 5)


def test_cosine_scheduler_composes_with_its_lr_monitor(hydra_conf):
    cfg = compose("train", overrides=["scheduler=cosine", "scheduler.warmup_fraction=0.25"])
    assert isinstance(instantiate(cfg.callbacks.lr_monitor), LearningRateMonitor)
    optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=8)  # as StudyModule calls it
    assert scheduler.lr_lambdas[0].warmup_steps == 2
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-4 / 3)
