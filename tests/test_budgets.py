"""Named budgets (conf/budget/): the same reduced training for every configuration of a table.

Config composition only (Hydra's compose API): fast. The run side (metrics.json records the budget)
is checked on one tiny run.
"""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.helpers import ROOT, find_runs, load_metrics, run_train

CONF = str(ROOT / "conf")


@pytest.fixture(scope="module")
def composed():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        yield lambda *overrides: compose(config_name="train", overrides=list(overrides))
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("preset", [f"table2_{i}" for i in range(1, 8)])
def test_cpu_budget_is_the_same_for_every_table2_configuration(composed, preset):
    from tests.test_presets import experiment_options  # the presets glob(table2_*) sweeps over

    loader = GlobalHydra.instance().config_loader()
    (name,) = experiment_options(loader, f"{preset}_*")
    cfg = composed(f"experiment={name}", "budget=cpu")
    assert cfg.budget.name == "cpu"
    assert cfg.data.train_subset == 10_000 and cfg.trainer.max_epochs == 10
    assert cfg.data.val_size == 5000  # the full validation split
    assert cfg.trainer.limit_val_batches is None
    full = composed(f"experiment={name}")
    assert full.budget.name == "full" and full.data.train_subset is None and full.trainer.max_epochs == 10
    # the budget changes the amount of training only: the model and optimizer are the preset's
    assert cfg.model == full.model and cfg.optimizer == full.optimizer


@pytest.mark.parametrize("preset", ["table1_1_adam", "table1_6_adamw_4l"])
def test_cpu_budget_for_the_lstm_is_three_epochs_of_the_whole_split(composed, preset):
    cfg = composed(f"experiment={preset}", "budget=cpu", "data=wikitext2_offline")
    assert cfg.task == "lstm" and cfg.budget.name == "cpu"
    assert cfg.trainer.max_epochs == 3 and "train_subset" not in cfg.data
    assert composed(f"experiment={preset}").trainer.max_epochs == 10  # the study's


def test_command_line_overrides_win_over_the_budget(composed):
    cfg = composed("experiment=table2_6_adamw_6l", "budget=cpu", "trainer.max_epochs=3", "data.train_subset=500")
    assert (cfg.trainer.max_epochs, cfg.data.train_subset, cfg.budget.name) == (3, 500, "cpu")


@pytest.mark.slow
def test_a_run_records_its_budget(tmp_path, data_dir):
    run_train("budget=cpu", "debug=fast", "test=false", log_dir=tmp_path, data_dir=data_dir)
    (run,) = find_runs(tmp_path)
    metrics = load_metrics(run)
    assert metrics["status"] == "completed" and metrics["budget"] == "cpu"
