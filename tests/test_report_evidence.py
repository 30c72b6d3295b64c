"""The report's evidence: seeds grouped into configurations (mean, std, n, 95% interval), the
study's findings checked (supported / contradicted / inconclusive / missing) and optimizers
compared at their best learning rate.

Synthetic run directories (``config.yaml`` + ``metrics.json``, as train.py writes them) with known
numbers, checked against independent computations: hand formulas with tabulated Student-t
quantiles, and scipy.stats' own Welch test. One slow test runs a real tiny lr-grid sweep.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as st

from analysis import load_runs, table2, to_markdown
from analysis.figures import plot_curves
from analysis.findings import K_STATED, check_findings
from analysis.lrgrid import lr_grids
from analysis.report import write_report
from analysis.stats import summarize, welch
from analysis.study import study_rows
from tests.helpers import ROOT, find_runs, load_metrics, run_train

T975 = {1: 12.706204736174704, 2: 4.302652729911275, 3: 3.182446305284263, 4: 2.7764451051977987}
STUDY = {  # table2/N -> (optimizer, layers, norm)
    1: ("adam", 2, "pre"),
    2: ("adamw", 2, "pre"),
    3: ("sgd", 2, "pre"),
    4: ("momentum", 2, "pre"),
    5: ("adamw", 4, "pre"),
    6: ("adamw", 6, "pre"),
    7: ("adamw", 6, "post"),
}
TARGETS = {
    "adam": ("torch.optim.Adam", 0.0),
    "adamw": ("torch.optim.AdamW", 0.0),
    "sgd": ("torch.optim.SGD", 0.0),
    "momentum": ("torch.optim.SGD", 0.9),
    "lion": ("lion_pytorch.Lion", 0.0),
}


def make_run(
    root: Path,
    name: str,
    *,
    optimizer="adamw",
    layers=2,
    norm="pre",
    seed=1,
    lr=3e-4,
    epochs=10,
    train_subset=None,
    val_acc=0.6,
    status="completed",
    memory=None,
    history=None,
    study_config="auto",
    extra=None,
) -> Path:
    """A run directory as train.py leaves it (the parts the report reads)."""
    run = root / name
    run.mkdir(parents=True)
    target, momentum = TARGETS[optimizer]
    if study_config == "auto":
        study_config = next((f"table2/{k}" for k, v in STUDY.items() if v == (optimizer, layers, norm)), None)
    config = {
        "optimizer": {
            "_target_": target,
            "_partial_": True,
            "lr": lr,
            "weight_decay": 5e-4,
            **({"momentum": momentum} if target.endswith("SGD") else {}),
        },
        "data": {"train_subset": train_subset, "seed": seed, "data_dir": f"/data/{seed}"},
        "task": "vit",
        "monitor": {"metric": "val/acc", "mode": "max"},
        "model": {"num_layers": layers, "norm": norm, "embed_dim": 256},
        "trainer": {"max_epochs": epochs, "default_root_dir": str(run)},
        "paths": {"output_dir": str(run)},
        "seed": seed,
        "label": None,
        "study_config": study_config,
        **(extra or {}),
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    history = history or [{"epoch": e, "val/loss": 2.0 - 0.1 * e, "train/loss": 2.0 - 0.12 * e} for e in range(epochs)]
    summary = {
        "status": status,
        "task": "vit",
        "seed": seed,
        "epochs": epochs,
        "experiment": {"name": None, "label": None, "study_config": study_config},
        "final": {"val/acc": val_acc, "val/loss": 1.0, "train/loss": 0.9, "train/acc": val_acc + 0.02},
        "best": {"val/acc": val_acc, "epoch": epochs - 1},
        "test": {},
        "train_seconds": 100.0 + seed,
        "peak_memory_mb": memory,
        "peak_rss_mb": 1000.0,
        "params": {"learnable": 1},
        "error": None,
        "history": history,
    }
    (run / "metrics.json").write_text(json.dumps(summary))
    return run


# -- seeds: mean, std, n and the 95% interval -------------------------------------------------
def test_summary_matches_hand_formulas():
    for values in ([0.60, 0.62, 0.65], [1.0, 2.0], [3.0, 3.5, 2.5, 4.0, 3.3]):
        x = np.array(values)
        n, mean = len(x), x.sum() / len(x)
        std = math.sqrt(((x - mean) ** 2).sum() / (n - 1))
        half = T975[n - 1] * std / math.sqrt(n)
        s = summarize(values)
        assert (s.n, s.mean, s.std) == (n, pytest.approx(mean, rel=1e-12), pytest.approx(std, rel=1e-12))
        assert (s.ci_low, s.ci_high) == (pytest.approx(mean - half, rel=1e-9), pytest.approx(mean + half, rel=1e-9))
    one = summarize([0.7])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.std) and math.isnan(one.ci_low)


def test_welch_matches_scipy():
    a, b = [0.66, 0.67, 0.65, 0.68], [0.62, 0.64, 0.61]
    d = welch(summarize(a), summarize(b))
    ref = st.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert d.diff == pytest.approx(np.mean(a) - np.mean(b), rel=1e-12)
    assert (d.t, d.p) == (pytest.approx(ref.statistic, rel=1e-9), pytest.approx(ref.pvalue, rel=1e-9))
    assert (d.ci_low, d.ci_high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


def test_table_cells_are_means_over_seeds_with_std_n_and_interval(tmp_path):
    accs = [0.60, 0.62, 0.65]
    for seed, acc in enumerate(accs, start=1):
        make_run(tmp_path, f"experiment=table2_2_adamw,seed={seed}", seed=seed, val_acc=acc)
    make_run(tmp_path, "experiment=table2_1_adam,seed=1", optimizer="adam", val_acc=0.55)
    # the same configuration and seed again (another sweep): one sample, the newer run kept
    make_run(tmp_path, "again/experiment=table2_2_adamw,seed=3", seed=3, val_acc=0.65)
    runs = load_runs(tmp_path)
    assert (runs["status"] == "duplicate").sum() == 1
    table = table2(runs).set_index("Config")
    row = table.loc["2"]
    mean, std = float(np.mean(accs)), float(np.std(accs, ddof=1))
    half = T975[2] * std / math.sqrt(3)
    assert row["n"] == 3 and row["Seeds"] == "1, 2, 3" and row["Val Acc (n)"] == 3
    assert row["Val Acc"] == pytest.approx(mean, rel=1e-12)
    assert row["Val Acc (std)"] == pytest.approx(std, rel=1e-12)
    assert row["Val Acc (ci95 low)"] == pytest.approx(mean - half, rel=1e-9)
    assert row["Val Acc (ci95 high)"] == pytest.approx(mean + half, rel=1e-9)
    assert row["Val Acc (diff)"] == pytest.approx(mean - study_rows().loc["table2/2", "val/acc"], rel=1e-9)
    assert len(row["Run"].split("; ")) == 3
    single = table.loc["1"]
    assert single["n"] == 1 and single["Val Acc"] == 0.55 and math.isnan(single["Val Acc (std)"])
    text = to_markdown(table2(runs))
    assert f"{mean:.4f} ± {std:.4f} (n=3)" in text and "| 0.5500 (study" in text


def test_one_seed_per_configuration_reads_as_before(tmp_path):
    make_run(tmp_path, "a", optimizer="adam", val_acc=0.55)
    make_run(tmp_path, "b", optimizer="sgd", val_acc=0.25)
    text = to_markdown(table2(load_runs(tmp_path)))
    assert "±" not in text and "Seeds" not in text and "(n=" not in text


def test_figure_draws_the_mean_with_a_std_band(tmp_path):
    runs_ = [make_run(tmp_path, f"s{seed}", seed=seed) for seed in (1, 2, 3)]
    runs = load_runs(tmp_path)
    curves = pd.DataFrame(
        [
            {
                "run": str(r.resolve()),
                "epoch": e,
                "val/acc": 0.1 * e + 0.01 * i,
                "train/acc": 0.1 * e,
                "val/loss": 1.0,
                "train/loss": 1.0,
            }
            for i, r in enumerate(runs_)
            for e in (1, 2)
        ]
    )
    fig = plot_curves(runs, curves, "vit", "epoch", "t")
    ax = fig.axes[1]
    val_line = next(line for line in ax.get_lines() if line.get_linestyle() == "--")
    assert list(val_line.get_ydata()) == pytest.approx([0.11, 0.21])  # mean of +0, +0.01, +0.02
    band = ax.collections[1].get_paths()[0].vertices[:, 1]  # train band first, then validation
    assert band.max() == pytest.approx(0.21 + 0.01, rel=1e-6) and band.min() == pytest.approx(0.11 - 0.01, rel=1e-6)
    assert "n=3" in val_line.axes.get_legend_handles_labels()[1][0] and "std" in fig.get_suptitle()


# -- findings ------------------------------------------------------------------------------------
def _check(result, finding: str, contains: str = "") -> pd.DataFrame:
    rows = result.checks[
        (result.checks["finding"] == finding) & result.checks["check"].str.contains(contains, regex=False)
    ]
    assert len(rows), (finding, contains)
    return rows


def _verdict(result, finding: str) -> str:
    return result.summary.set_index("finding").at[finding, "verdict"]


@pytest.mark.parametrize(
    "adamw, adam, verdict",
    [
        ([0.66, 0.67, 0.68], [0.60, 0.61, 0.62], "supported"),
        ([0.60, 0.61, 0.62], [0.66, 0.67, 0.68], "contradicted"),
        ([0.60, 0.66, 0.63], [0.61, 0.65, 0.62], "inconclusive"),
    ],
)
def test_verdict_from_welch_interval(tmp_path, adamw, adam, verdict):
    for seed, (a, b) in enumerate(zip(adamw, adam), start=1):
        make_run(tmp_path, f"adamw{seed}", seed=seed, val_acc=a)
        make_run(tmp_path, f"adam{seed}", optimizer="adam", seed=seed, val_acc=b)
    result = check_findings(load_runs(tmp_path))
    (row,) = _check(result, "adamw_vs_adam", "validation accuracy").to_dict("records")
    ref = st.ttest_ind(adamw, adam, equal_var=False).confidence_interval(0.95)
    assert row["verdict"] == verdict and row["method"] == "welch"
    assert (row["ci low"], row["ci high"]) == (pytest.approx(ref.low, rel=1e-9), pytest.approx(ref.high, rel=1e-9))
    assert row["runs A"].count("adamw") == 3 and row["seeds B"] == "1, 2, 3"


def test_missing_runs_and_settings_are_named(tmp_path):
    make_run(tmp_path, "adamw", val_acc=0.6)
    make_run(tmp_path, "post", layers=6, norm="post", val_acc=0.6)
    make_run(tmp_path, "pre6", layers=6, val_acc=0.7, epochs=5)  # another budget: not paired with post
    result = check_findings(load_runs(tmp_path))
    (row,) = _check(result, "adamw_vs_adam", "accuracy").to_dict("records")
    assert row["verdict"] == "missing" and "no completed runs of table2/1" in row["reason"]
    assert _verdict(result, "adamw_vs_adam") == "missing"
    (row,) = _check(result, "prenorm_beats_postnorm").to_dict("records")
    assert row["verdict"] == "missing" and "never at the same setting" in row["reason"]
    (row,) = _check(result, "memory_depth_not_optimizer", "table2/1").to_dict("records")
    assert row["verdict"] == "missing"


def test_single_seed_decides_only_far_beyond_the_stated_spread(tmp_path):
    # one run per optimizer: SGD far below the others, AdamW vs Adam 0.0002 apart (as in the study)
    for opt, acc in (("adam", 0.6171), ("adamw", 0.6173), ("sgd", 0.2587), ("momentum", 0.4212)):
        make_run(tmp_path, opt, optimizer=opt, val_acc=acc)
    result = check_findings(load_runs(tmp_path))
    assert _verdict(result, "sgd_worst") == "supported"  # LSTM checks missing, ViT ones supported
    assert _verdict(result, "momentum_helps_sgd") == "supported"
    (row,) = _check(result, "adamw_vs_adam", "accuracy").to_dict("records")
    sigma = 0.02 * 0.6171  # assumed: 2% of side B's value, stated in the report
    assert row["verdict"] == "inconclusive" and row["method"] == "stated spread"
    assert row["sigma"] == pytest.approx(sigma, rel=1e-9)
    assert row["ci high"] - row["diff"] == pytest.approx(K_STATED * sigma * math.sqrt(2), rel=1e-9)
    assert "assumed" in row["basis"] and not result.spreads.empty


def test_single_seed_uses_the_spread_measured_from_seeded_configurations(tmp_path):
    for seed, acc in ((1, 0.40), (2, 0.42), (3, 0.44)):
        make_run(tmp_path, f"m{seed}", optimizer="momentum", seed=seed, val_acc=acc)
    make_run(tmp_path, "sgd", optimizer="sgd", val_acc=0.30)
    result = check_findings(load_runs(tmp_path))
    (row,) = _check(result, "momentum_helps_sgd", "accuracy").to_dict("records")
    sigma = float(np.std([0.40, 0.42, 0.44], ddof=1))  # the only configuration with seeds
    assert row["sigma"] == pytest.approx(sigma, rel=1e-9) and "measured" in row["basis"]
    half = K_STATED * sigma * math.sqrt(1 / 3 + 1)
    assert row["ci low"] == pytest.approx(0.42 - 0.30 - half, rel=1e-9)
    assert row["verdict"] == ("supported" if 0.12 - half > 0 else "inconclusive")


def test_memory_and_overfitting_checks(tmp_path):
    for seed in (1, 2):
        make_run(tmp_path, f"l2_{seed}", seed=seed, memory=1290.0 + seed)
        make_run(tmp_path, f"l4_{seed}", layers=4, seed=seed, memory=1690.0 + seed)
        make_run(tmp_path, f"adam_{seed}", optimizer="adam", seed=seed, memory=1291.0 + seed)
    # config 6: validation loss bottoms at epoch 5 and ends 10% above it in both seeds -> overfits
    rising = [{"epoch": e, "val/loss": 1.0 + 0.02 * abs(e - 5), "train/loss": 0.5} for e in range(10)]
    for seed in (1, 2):
        make_run(tmp_path, f"l6_{seed}", layers=6, seed=seed, history=rising)
    result = check_findings(load_runs(tmp_path))
    (deeper,) = _check(result, "memory_depth_not_optimizer", "table2/5").to_dict("records")[:1]
    assert deeper["verdict"] == "supported" and deeper["diff"] == pytest.approx(400.0)
    (same,) = _check(result, "memory_depth_not_optimizer", "table2/1").to_dict("records")
    assert same["verdict"] == "supported"  # 1 MB apart, within 5%
    over = _check(result, "no_overfitting")
    by_config = dict(zip(over["check"].str.slice(0, 8), over["verdict"]))
    assert by_config["table2/6"] == "contradicted" and by_config["table2/2"] == "supported"
    assert _verdict(result, "no_overfitting") == "contradicted"


# -- learning-rate grids ---------------------------------------------------------------------------
def test_best_learning_rate_per_optimizer(tmp_path):
    grid = {  # optimizer -> lr -> val acc per seed
        "adam": {1e-4: [0.50, 0.52], 3e-4: [0.60, 0.58], 1e-3: [0.55, 0.57]},
        "sgd": {1e-2: [0.30, 0.32], 1e-1: [0.45, 0.47]},
        "lion": {1e-5: [0.40, 0.42], 1e-4: [0.61, 0.63], 1e-3: [0.20, 0.10]},  # any optimizer name
    }
    for opt, points in grid.items():
        for lr, accs in points.items():
            for seed, acc in enumerate(accs, start=1):
                make_run(
                    tmp_path,
                    f"{opt}_{lr:g}_{seed}",
                    optimizer=opt,
                    lr=lr,
                    seed=seed,
                    val_acc=acc,
                    epochs=3,
                    train_subset=5000,
                )
    make_run(tmp_path, "sgd_1_1", optimizer="sgd", lr=1.0, status="diverged", epochs=3, train_subset=5000)
    make_run(
        tmp_path,
        "adam_other_setting",
        optimizer="adam",
        lr=3e-4,
        epochs=3,
        train_subset=5000,
        extra={"data": {"train_subset": 5000, "seed": 1, "batch_size": 64}},
    )  # not part of the grid
    best = lr_grids(load_runs(tmp_path)).best
    best = best.set_index(best["optimizer"].str.lower())  # Adam, SGD (the study's names), lion (its own)
    expected = {opt: max(points, key=lambda lr: np.mean(points[lr])) for opt, points in grid.items()}
    assert expected == {"adam": 3e-4, "sgd": 1e-1, "lion": 1e-4}
    for opt, lr in expected.items():
        assert best.at[opt, "best lr"] == lr
        assert best.at[opt, "mean"] == pytest.approx(np.mean(grid[opt][lr]), rel=1e-12)
        assert best.at[opt, "n"] == 2 and best.at[opt, "max_epochs"] == 3 and best.at[opt, "train_subset"] == 5000
    assert list(best.sort_values("rank").index) == ["lion", "adam", "sgd"]
    assert best.at["adam", "mean at study lr"] == pytest.approx(0.59)  # the study's 3e-4 is in its grid
    assert "upper edge" in best.at["sgd", "note"] and "lr 1 diverged" in best.at["sgd", "note"]
    ref = st.ttest_ind(grid["sgd"][1e-1], grid["lion"][1e-4], equal_var=False)
    assert best.at["sgd", "diff vs best"] == pytest.approx(0.46 - 0.62, rel=1e-9)
    assert best.at["sgd", "p vs best"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_lr_grid_presets_sweep_a_log_grid_around_the_studys_lr():
    from hydra import compose, initialize_config_dir

    import lmvit.resolvers  # noqa: F401

    presets = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("lrgrid_*.yaml"))
    assert presets == [f"lrgrid_{t}_{o}" for t in ("lstm", "vit") for o in ("adam", "adamw", "momentum", "sgd")]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for preset in presets:
            cfg = compose("train", overrides=[f"experiment={preset}"], return_hydra_config=True)
            lrs = [float(x) for x in str(cfg.hydra.sweeper.params["optimizer.lr"]).split(",")]
            steps = np.diff(np.log10(lrs))
            assert len(lrs) >= 5 and steps == pytest.approx(np.full(len(steps), 0.5), abs=0.03), preset
            assert cfg.optimizer.lr in lrs and cfg.study_config is None and cfg.hydra.mode.name == "MULTIRUN"
            assert preset.split("_")[-1] == cfg.hydra.runtime.choices.optimizer
            assert cfg.task == preset.split("_")[1] and cfg.trainer.max_epochs == 10
            assert str(cfg.label).endswith(f"lr {cfg.optimizer.lr}")


# -- end to end ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_lr_grid_sweep_with_seeds_end_to_end(tmp_path, data_dir):
    """A real (tiny) lr-grid sweep over two seeds: one job directory per (lr, seed), the report's
    tables group the seeds and the lr section picks the lr with the best mean over seeds."""
    run_train(
        "experiment=lrgrid_vit_adamw",
        "optimizer.lr=1e-4,3e-3",
        "seed=1,2",
        "debug=fast",
        "callbacks.progress_bar=null",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "test=false",
        "data.train_subset=64",
        "model.num_layers=1",
        log_dir=tmp_path,
        data_dir=data_dir,
        env={"OMP_NUM_THREADS": "1"},
    )
    runs = find_runs(tmp_path)
    assert len(runs) == 4 and len({r.name for r in runs}) == 4 and all("seed=" in r.name for r in runs)
    report = write_report(tmp_path / "debug", tmp_path / "report")  # debug presets write below <log_dir>/debug
    table = pd.read_csv(tmp_path / "report" / "table2.csv")
    assert sorted(table["n"]) == [2, 2]
    by_lr: dict[float, list[float]] = {}
    for run in runs:  # independent: each run's own config.yaml and metrics.json
        lr = float(yaml.safe_load((run / "config.yaml").read_text())["optimizer"]["lr"])
        by_lr.setdefault(lr, []).append(load_metrics(run)["final"]["val/acc"])
    best_lr = max(sorted(by_lr), key=lambda lr: np.mean(by_lr[lr]))
    (row,) = report.lr_grids.best.to_dict("records")
    assert row["optimizer"] == "AdamW" and row["best lr"] == best_lr and row["max_epochs"] == 2
    assert row["mean"] == pytest.approx(np.mean(by_lr[best_lr]), rel=1e-9)
    text = (tmp_path / "report" / "README.md").read_text()
    assert "## Findings" in text and "## Optimizers at their best learning rate" in text
    assert "Budget seen: 2 epochs, 64 training examples" in text
