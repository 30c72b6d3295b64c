"""Named budgets (``conf/budget/``) and the report's budget and second-reference columns.

Composition with Hydra's compose API (and one ``train.py --cfg job``), the report from synthetic run
directories (``config.yaml`` + ``metrics.json`` as train.py writes them) with known numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from scipy import stats

from analysis import load_runs
from analysis.report import write_report
from analysis.study import SECOND_REFERENCE_VAL_ACC, TABLE2_ROWS, second_reference
from analysis.tables import envelope, table2
from lmvit.cli import refuse_unknown_choices
from tests.helpers import ROOT

TABLE1 = [f"table1_{i}" for i in ("1_adam", "2_adamw", "3_sgd", "4_momentum", "5_adamw_2l", "6_adamw_4l")]
TABLE2 = [p.stem for p in sorted((ROOT / "conf" / "experiment").glob("table2_*.yaml"))]


@pytest.fixture(scope="module")
def composer():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        yield lambda *overrides: compose("train", overrides=list(overrides))
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("preset", TABLE2)
def test_cpu_budget_sets_every_table2_configuration_alike(composer, preset):
    cfg = composer(f"experiment={preset}", "budget=cpu")
    assert (cfg.budget, cfg.data.train_subset, cfg.trainer.max_epochs) == ("cpu", 10000, 10)
    assert cfg.data.val_size == composer(f"experiment={preset}").data.val_size  # the full validation split


@pytest.mark.parametrize("preset", TABLE1)
def test_cpu_budget_gives_table1_three_epochs_of_the_offline_split(composer, preset):
    cfg = composer(f"experiment={preset}", "data=wikitext2_offline", "budget=cpu")
    assert (cfg.budget, cfg.trainer.max_epochs) == ("cpu", 3)
    assert "train_subset" not in cfg.data  # the whole training split


def test_full_budget_changes_nothing_and_the_command_line_wins(composer):
    for preset in ("table2_6_adamw_6l", "table1_3_sgd", "extra/table2_6_50ep"):
        default, full = composer(f"experiment={preset}"), composer(f"experiment={preset}", "budget=full")
        assert full == default and full.budget == "full"
    assert composer("experiment=extra/table2_6_50ep").trainer.max_epochs == 50
    cfg = composer("experiment=table2_6_adamw_6l", "budget=cpu", "trainer.max_epochs=4", "data.train_subset=500")
    assert (cfg.trainer.max_epochs, cfg.data.train_subset) == (4, 500)


def test_train_py_cfg_job_shows_the_budget():
    out = subprocess.run(
        [sys.executable, "train.py", "budget=cpu", "experiment=table2_6_adamw_6l", "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    cfg = yaml.safe_load(out)
    assert (cfg["budget"], cfg["data"]["train_subset"], cfg["trainer"]["max_epochs"]) == ("cpu", 10000, 10)


def test_bad_budget_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        refuse_unknown_choices(["train.py", "experiment=table2_1_adam", "budget=laptop"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "budget=laptop: no such option in conf/budget/; choose one of cpu, full"
    refuse_unknown_choices(["train.py", "budget=cpu", "experiment=glob(table2_*)", "optimizer=adam,sgd"])  # fine


# -- the report ----------------------------------------------------------------------------------
def make_run(root: Path, name: str, config: int, seed: int, val_acc: float, budget: str | None, subset=None):
    """A completed Table 2 run as train.py leaves it (the parts the report reads)."""
    _, norm, layers, optimizer, *_ = TABLE2_ROWS[config - 1]
    run = root / name
    run.mkdir(parents=True)
    target = (
        "torch.optim.AdamW"
        if optimizer == "adamw"
        else "torch.optim.Adam"
        if optimizer == "adam"
        else "torch.optim.SGD"
    )
    cfg = {
        "task": "vit",
        "seed": seed,
        "optimizer": {"_target_": target, "lr": 3e-4, "momentum": 0.9 if optimizer == "momentum" else 0.0},
        "model": {"num_layers": layers, "norm": norm},
        "data": {"train_subset": subset},
        "trainer": {"max_epochs": 10},
        "monitor": {"metric": "val/acc", "mode": "max"},
        "study_config": f"table2/{config}",
        **({"budget": budget} if budget else {}),
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    summary = {
        "status": "completed",
        "task": "vit",
        "seed": seed,
        "epochs": 10,
        "experiment": {"study_config": f"table2/{config}", "budget": budget},
        "final": {"val/acc": val_acc, "val/loss": 1.0, "train/loss": 0.9, "train/acc": val_acc},
        "best": {"val/acc": val_acc, "epoch": 9},
        "test": {},
        "train_seconds": 100.0,
        "history": [],
    }
    (run / "metrics.json").write_text(json.dumps(summary))
    return run


def test_second_reference_numbers():
    assert [second_reference(f"table2/{i}") for i in range(1, 8)] == [
        0.6447,
        0.6443,
        0.1816,
        0.2791,
        0.7064,
        0.7395,
        0.7592,
    ]
    assert SECOND_REFERENCE_VAL_ACC[2] == 0.6443
    for other in ("table1/1", "table2/6@50", None):
        assert second_reference(other) != second_reference(other)  # NaN


def test_envelope_verdicts_by_hand():
    assert envelope(0.6, 0.7, 0.65, 0.62, 0.68) == "inside [0.6000, 0.7000] with its interval"
    assert envelope(0.6, 0.7, 0.75, 0.72, 0.78) == "above [0.6000, 0.7000] with its interval"
    assert envelope(0.6, 0.7, 0.55, 0.5, 0.59) == "below [0.6000, 0.7000] with its interval"
    assert envelope(0.6, 0.7, 0.69, 0.66, 0.72) == "mean inside [0.6000, 0.7000], interval crosses its edge"
    assert envelope(0.6, 0.7, 0.71, float("nan"), float("nan")) == "mean above [0.6000, 0.7000] (one seed: no interval)"


def test_report_separates_budgets_and_places_full_scale_rows_in_the_envelope(tmp_path):
    runs = tmp_path / "runs"
    accs = {1: [0.630, 0.632, 0.634], 2: [0.66, 0.67, 0.665], 3: [0.20, 0.30, 0.25]}  # full scale, 3 seeds
    for config, values in accs.items():
        for seed, acc in enumerate(values, start=1):
            make_run(runs, f"full_{config}_{seed}", config, seed, acc, "full" if seed > 1 else None)
    for seed in (1, 2):  # a reduced study of config 2: its own row, no second reference
        make_run(runs, f"cpu_2_{seed}", 2, seed, 0.5 + 0.01 * seed, "cpu", subset=10000)
    table = table2(load_runs(runs)).set_index(["Config", "Budget"])
    assert set(table.index) == {("1", "full"), ("2", "full"), ("3", "full"), ("2", "cpu")}  # never mixed
    assert table.loc[("2", "cpu"), "n"] == 2 and table.loc[("2", "full"), "n"] == 3
    assert table.loc[("2", "cpu"), "Val Acc (ref2)"] != table.loc[("2", "cpu"), "Val Acc (ref2)"]  # NaN
    for config, values in accs.items():
        row = table.loc[(str(config), "full")]
        mean = sum(values) / 3
        half = stats.t.ppf(0.975, 2) * stats.tstd(values) / 3**0.5
        assert row["Val Acc"] == pytest.approx(mean, rel=1e-12)
        assert row["Val Acc (ci95 low)"] == pytest.approx(mean - half, rel=1e-9)
        assert row["Val Acc (ref2)"] == SECOND_REFERENCE_VAL_ACC[config]
    # config 1: envelope [0.6171, 0.6447], mean 0.632 +- 0.0050: inside with its interval
    assert table.loc[("1", "full"), "Envelope"] == "inside [0.6171, 0.6447] with its interval"
    # config 2: [0.6173, 0.6443], mean 0.665 +- 0.0124 -> above with its interval
    assert table.loc[("2", "full"), "Envelope"] == "above [0.6173, 0.6443] with its interval"
    # config 3: [0.1816, 0.2587], mean 0.25 +- 0.124: the interval crosses the upper edge
    assert table.loc[("3", "full"), "Envelope"] == "mean inside [0.1816, 0.2587], interval crosses its edge"

    write_report(runs, tmp_path / "report")
    text = (tmp_path / "report" / "table2.md").read_text()
    assert "## Table 2: ViT on CIFAR-10 (loss, accuracy, train time in s), budget cpu" in text
    assert "## Table 2: ViT on CIFAR-10 (loss, accuracy, train time in s), budget full" in text
    cpu, full = text.split("budget full")
    assert "Envelope" not in cpu and "SamuelA-L/IFT6135-HW2 0.6443" in full and "above [0.6173, 0.6443]" in full
    figures = sorted(p.name for p in (tmp_path / "report").glob("figure*.png"))
    assert "figure3_cpu.png" in figures and "figure3_full.png" in figures


def test_both_forms_of_a_runs_budget_are_one_configuration():
    """A run recorded with the early ``budget: {name: cpu}`` and one with ``budget: cpu`` are seeds
    of one configuration (the report pairs them), and neither joins ``full``."""
    from analysis.runs import config_keys

    config = {"task": "vit", "model": {"num_layers": 2}, "optimizer": {"lr": 3e-4}}
    early = config_keys({**config, "budget": {"name": "cpu"}, "seed": 1})
    now = config_keys({**config, "budget": "cpu", "seed": 2})
    full = config_keys({**config, "seed": 3})
    assert early["group"] == now["group"] != full["group"]


def test_a_table_row_says_under_which_precision_it_ran():
    """The study trained in fp32; a row run under bf16 autocast (the CPU default) says so."""
    import pandas as pd

    from analysis.tables import _note

    assert "precision bf16-mixed" in _note(pd.Series({"precision": "bf16-mixed"}), None)
    assert "precision 32-true" in _note(pd.Series({"precision": "32-true"}), None)
    assert "precision" not in _note(pd.Series({"precision": float("nan")}), None)  # unknown: nothing said


def test_a_row_says_which_seeds_stepped_a_fused_optimizer():
    """The fused kernel became the CPU default during the CPU study: a row mixing kernels says so
    (its time column mixes two step speeds), a row of older records says nothing."""
    import pandas as pd

    from analysis.tables import kernel_note

    mixed = pd.DataFrame({"seed": [1, 2, 3], "optimizer_kernel": [None, "default", "fused"]})
    assert kernel_note(mixed) == "fused optimizer kernel for seed(s) 3, torch's loop for 1, 2"
    assert kernel_note(mixed.assign(optimizer_kernel="fused")) == "fused optimizer kernel"
    assert kernel_note(mixed.assign(optimizer_kernel=None)) == ""
    assert kernel_note(pd.DataFrame({"seed": [1]})) == ""
