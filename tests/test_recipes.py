"""The report's "beyond the study" table: runs of the vit_strong*/lstm_regularized presets with
their recipe, read from the run's own config."""

from __future__ import annotations

import json

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from analysis.recipes import beyond_table
from analysis.report import write_report
from analysis.runs import load_runs
from tests.helpers import ROOT


def _fake_run(root, name, experiment, task, final, test, overrides=()):
    run = root / name
    run.mkdir(parents=True)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *overrides] if experiment else list(overrides))
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    metric = next(iter(final))
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "status": "completed",
                "task": task,
                "epochs": cfg.trainer.max_epochs,
                "train_seconds": 10.0,
                "experiment": {"name": experiment, "label": cfg.get("label"), "study_config": cfg.get("study_config")},
                "final": final,
                "best": {metric: final[metric], "epoch": 1},
                "test": test,
                "params": {"learnable": 1},
                "history": [],
            }
        )
    )
    return run


def test_beyond_table_lists_the_presets_runs_with_their_recipe(tmp_path):
    _fake_run(tmp_path, "a", "vit_strong_100ep", "vit", {"val/acc": 0.9, "val/acc_ema": 0.91}, {"test/acc": 0.89})
    _fake_run(tmp_path, "b", "lstm_regularized", "lstm", {"val/ppl": 120.0}, {"test/ppl": 115.0})
    _fake_run(tmp_path, "c", "table2_1_adam", "vit", {"val/acc": 0.6}, {"test/acc": 0.6})  # the study's: left out
    table = beyond_table(load_runs(tmp_path))
    assert list(table["Experiment"]) == ["lstm_regularized", "vit_strong_100ep"]
    lstm, vit = table.iloc[0], table.iloc[1]
    assert (vit["Best val"], vit["Val (EMA)"], vit["Test"], vit["Epochs"]) == (0.9, 0.91, 0.89, 100)
    assert "384d 7L 12h p4" in vit["Recipe"] and "autoaugment" in vit["Recipe"] and "LS 0.1" in vit["Recipe"]
    assert "EMA 0.9995" in vit["Recipe"] and "Adam lr 0.001 wd 5e-05" in vit["Recipe"]
    assert vit["Study's best"] == "0.7712 (table2/6@50)"
    assert "emb dropout 0.25" in lstm["Recipe"] and "clip 1" in lstm["Recipe"] and lstm["Test"] == 115.0

    report = write_report(tmp_path, tmp_path / "report")
    assert "beyond" in report.tables
    text = (tmp_path / "report" / "README.md").read_text()
    assert "Beyond the study" in text and "vit_strong_100ep" in text
    assert (tmp_path / "report" / "beyond.csv").is_file()


def test_reports_without_such_runs_have_no_beyond_table(tmp_path):
    _fake_run(tmp_path, "c", "table2_1_adam", "vit", {"val/acc": 0.6}, {"test/acc": 0.6})
    assert beyond_table(load_runs(tmp_path)).empty
    assert "beyond" not in write_report(tmp_path, tmp_path / "report").tables
