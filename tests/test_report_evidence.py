"""The report's evidence: seeds grouped into configurations (mean, std, n, 95% interval), the
study's findings checked (paired t / Welch / not tested with n=1, Holm across the report,
supported / partly tested / mixed / contradicted / inconclusive / missing), timings refused under
load, study rows matched by content, and optimizers compared at their best learning rate.

Synthetic run directories (``config.yaml`` + ``metrics.json``, as train.py writes them) with known
numbers, checked against independent computations: hand formulas with tabulated Student-t
quantiles, Holm by hand, and scipy.stats' own paired and Welch tests. One slow test runs a real
tiny lr-grid sweep.
"""

from __future__ import annotations

import itertools
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
from analysis.findings import ALPHA, check_findings, overall
from analysis.lrgrid import lr_grids
from analysis.report import write_report
from analysis.stats import compare, holm, paired, summarize, welch
from analysis.study import study_rows
from analysis.timing import LOAD_SLACK
from tests.helpers import ROOT, find_runs, load_metrics, run_train

_CLOCK = itertools.count(1_700_000_000, 10_000)  # a run's start: each after the previous one
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
    test_acc=None,
    seconds=None,
    load=1.0,
    cores=2,
    device="Test CPU @ 2.0GHz",
    start=None,
) -> Path:
    """A run directory as train.py leaves it (the parts the report reads). Each epoch's history
    records the machine (load ``load`` on ``cores`` cores of ``device``); runs train one after the
    other (``start``: the first epoch's start, unix seconds; by default after the previous run)."""
    run = root / name
    start = next(_CLOCK) if start is None else start
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
    for row in history:  # what lightning_modules/callbacks/timing.machine_state adds to each epoch
        row.setdefault("time/epoch_s", 10.0)
        row.update(
            {
                "time/load_1m": load,
                "time/cores": cores,
                "time/cpus": cores,
                "time/device": device,
                "time/host": "testhost",
                "time/end_unix": start + 10.0 * (row["epoch"] + 1),
            }
        )
    summary = {
        "status": status,
        "task": "vit",
        "seed": seed,
        "epochs": epochs,
        "experiment": {"name": None, "label": None, "study_config": study_config},
        "final": {"val/acc": val_acc, "val/loss": 1.0, "train/loss": 0.9, "train/acc": val_acc + 0.02},
        "best": {"val/acc": val_acc, "epoch": epochs - 1},
        "test": {} if test_acc is None else {"test/acc": test_acc},
        "train_seconds": 100.0 + seed if seconds is None else seconds,
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


# -- the tests: paired t, Welch, n=1, Holm ------------------------------------------------------
def test_paired_matches_scipy_ttest_rel():
    a, b = [0.61, 0.64, 0.60, 0.66], [0.60, 0.62, 0.60, 0.63]
    d = paired(a, b)
    ref = st.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert d.method == "paired t" and d.n == 4 and d.df == 3
    assert d.diff == pytest.approx(np.mean(np.subtract(a, b)), rel=1e-12)
    assert (d.t, d.p) == (pytest.approx(ref.statistic, rel=1e-9), pytest.approx(ref.pvalue, rel=1e-9))
    assert (d.ci_low, d.ci_high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    # the p-value at another boundary: the same test of (a - b - 0.01)
    shifted = st.ttest_1samp(np.subtract(a, b), 0.01)
    assert d.p_at(0.01) == pytest.approx(shifted.pvalue, rel=1e-9)


def test_compare_pairs_shared_seeds_else_welch_else_not_tested():
    a, b = {1: 0.61, 2: 0.64, 3: 0.60}, {1: 0.60, 2: 0.62, 3: 0.58}
    d = compare(a, b).difference
    assert d.method == "paired t" and d.p == pytest.approx(st.ttest_rel([0.61, 0.64, 0.60], [0.60, 0.62, 0.58]).pvalue)
    unpaired = compare(a, {4: 0.60, 5: 0.62, 6: 0.58})  # other seeds: independent sides
    ref = st.ttest_ind([0.61, 0.64, 0.60], [0.60, 0.62, 0.58], equal_var=False)
    assert unpaired.difference.method == "welch" and unpaired.difference.p == pytest.approx(ref.pvalue, rel=1e-9)
    one_shared = compare({1: 0.61, 2: 0.64}, {1: 0.60, 5: 0.62})  # one shared seed: not a pairing
    assert one_shared.difference.method == "welch"
    single = compare({1: 0.400, 2: 0.401}, {1: 0.39})  # the example: one run on a side
    assert single.difference is None and "not tested (n=1)" in single.reason and "side B" in single.reason


def test_holm_against_a_hand_computation():
    p = [0.01, 0.04, 0.03, math.nan, 0.005]
    # m = 4 p-values; sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, max(1 x 0.04, previous)
    expected = [0.03, 0.06, 0.06, math.nan, 0.02]
    got = holm(p)
    assert math.isnan(got[3])
    assert [g for i, g in enumerate(got) if i != 3] == pytest.approx([e for i, e in enumerate(expected) if i != 3])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


# -- findings ------------------------------------------------------------------------------------
def _check(result, finding: str, contains: str = "") -> pd.DataFrame:
    rows = result.checks[
        (result.checks["finding"] == finding) & result.checks["check"].str.contains(contains, regex=False)
    ]
    assert len(rows), (finding, contains)
    return rows


def _verdict(result, finding: str, budget: str = "full") -> str:
    summary = result.summary.set_index(["finding", "budget"])
    return summary.at[(finding, budget), "verdict"]


def _hand_holm(pvalues: list[float]) -> dict[float, float]:
    """Holm by hand: the i-th smallest of m p-values times (m - i), never below the previous."""
    ordered, out, running = sorted(pvalues), {}, 0.0
    for i, p in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - i) * p))
        out[p] = running
    return out


@pytest.mark.parametrize(
    "adamw, adam",
    [
        ([0.66, 0.68, 0.67], [0.60, 0.615, 0.62]),  # clearly better in every seed
        ([0.60, 0.61, 0.62], [0.66, 0.665, 0.68]),  # clearly worse
        ([0.60, 0.66, 0.63], [0.61, 0.65, 0.62]),  # no difference
    ],
)
def test_shared_seeds_are_paired_and_holm_adjusted(tmp_path, adamw, adam):
    for seed, (a, b) in enumerate(zip(adamw, adam), start=1):
        make_run(tmp_path, f"adamw{seed}", seed=seed, val_acc=a, seconds=100.0 + seed)
        make_run(tmp_path, f"adam{seed}", optimizer="adam", seed=seed, val_acc=b, seconds=110.0 + 2 * seed)
    result = check_findings(load_runs(tmp_path))
    (row,) = _check(result, "adamw_vs_adam", "validation accuracy").to_dict("records")
    ref = st.ttest_rel(adamw, adam)
    ci = ref.confidence_interval(0.95)
    assert row["method"] == "paired t" and row["paired seeds"] == "1, 2, 3" and row["n A"] == row["n B"] == 3
    assert row["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (row["ci low"], row["ci high"]) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    # Holm over every check of the report with a p-value (here accuracy and training time)
    ps = list(result.checks["p"].dropna())
    assert len(ps) == 2
    adjusted = _hand_holm(ps)[row["p"]]
    assert row["p adjusted"] == pytest.approx(adjusted, rel=1e-9)
    expected = "inconclusive" if adjusted >= ALPHA else "supported" if row["diff"] > 0 else "contradicted"
    assert row["verdict"] == expected
    assert row["runs A"].count("adamw") == 3 and row["seeds B"] == "1, 2, 3"


def test_independent_seeds_use_welch(tmp_path):
    adamw, adam = [0.66, 0.68, 0.67], [0.60, 0.615, 0.62]
    for i, (a, b) in enumerate(zip(adamw, adam)):
        make_run(tmp_path, f"adamw{i}", seed=i + 1, val_acc=a)
        make_run(tmp_path, f"adam{i}", optimizer="adam", seed=i + 11, val_acc=b)
    result = check_findings(load_runs(tmp_path))
    (row,) = _check(result, "adamw_vs_adam", "validation accuracy").to_dict("records")
    ref = st.ttest_ind(adamw, adam, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert row["method"] == "welch" and row["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (row["ci low"], row["ci high"]) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


def test_a_single_run_is_not_tested(tmp_path):
    # the example: two seeds at 0.400 / 0.401 against one run at 0.39
    make_run(tmp_path, "adamw1", seed=1, val_acc=0.400)
    make_run(tmp_path, "adamw2", seed=2, val_acc=0.401)
    make_run(tmp_path, "adam1", optimizer="adam", seed=1, val_acc=0.39)
    # one run per optimizer, SGD far below: still one run a side, not tested
    make_run(tmp_path, "sgd", optimizer="sgd", val_acc=0.2587)
    make_run(tmp_path, "momentum", optimizer="momentum", val_acc=0.4212)
    result = check_findings(load_runs(tmp_path))
    (row,) = _check(result, "adamw_vs_adam", "validation accuracy").to_dict("records")
    assert row["verdict"] == "not tested" and "n=1" in row["reason"] and pd.isna(row.get("p"))
    assert row["mean A"] == pytest.approx(0.4005) and row["n B"] == 1
    assert _verdict(result, "adamw_vs_adam") == "not tested"
    assert _verdict(result, "momentum_helps_sgd") == "not tested"  # ViT: n=1, LSTM: missing
    assert "p" not in result.checks.columns or result.checks["p"].isna().all()


def test_finding_verdicts_partly_tested_mixed_and_overall_rules(tmp_path):
    accs = {"adam": 0.60, "adamw": 0.61, "momentum": 0.45, "sgd": 0.25}
    for seed, noise in ((1, 0.0), (2, 0.004), (3, -0.003)):
        for opt, acc in accs.items():
            make_run(tmp_path, f"{opt}{seed}", optimizer=opt, seed=seed, val_acc=acc + noise * (1 + len(opt) % 3))
        make_run(tmp_path, f"l4_{seed}", layers=4, seed=seed, val_acc=0.70 + noise)  # depth helps 2 -> 4
        make_run(tmp_path, f"l6_{seed}", layers=6, seed=seed, val_acc=0.65 - noise)  # ... but not 4 -> 6
    result = check_findings(load_runs(tmp_path))
    sgd = _check(result, "sgd_worst")
    assert sorted(sgd["verdict"]) == ["missing"] * 3 + ["supported"] * 3  # no LSTM runs
    assert _verdict(result, "sgd_worst") == "partly tested (3 of 6 checks)"
    depth = dict(
        zip(_check(result, "depth_helps_vit")["check"].str.slice(0, 8), _check(result, "depth_helps_vit")["verdict"])
    )
    assert depth == {"table2/5": "supported", "table2/6": "contradicted"}
    assert _verdict(result, "depth_helps_vit") == "mixed"
    assert overall(["supported", "supported"]) == ("supported", "supported")
    assert overall(["supported", "inconclusive"]) == ("inconclusive", "inconclusive")
    assert overall(["supported", "not tested"]) == ("partly tested", "partly tested (1 of 2 checks)")
    assert overall(["contradicted", "missing"])[0] == "contradicted"
    assert overall(["missing", "missing"]) == ("missing", "missing")
    assert overall(["not tested", "missing"]) == ("not tested", "not tested")


@pytest.mark.parametrize(
    "gain, noise",
    [(0.015, [0.0, 0.002, -0.002]), (0.06, [0.0, 0.002, -0.002]), (0.03, [0.0, 0.03, -0.025])],
)
def test_not_better_respects_its_margin(tmp_path, gain, noise):
    from analysis.findings import Compare, Finding

    finding = Finding(
        "x",
        "4 layers do not beat 2 by more than 5%",
        "test",
        (Compare("vit", "val/acc", "table2/5", "table2/2", "not_better", 0.05),),
    )
    base = [0.60, 0.62, 0.61]
    for seed, (b, n) in enumerate(zip(base, noise), start=1):
        make_run(tmp_path, f"l2_{seed}", seed=seed, val_acc=b)
        make_run(tmp_path, f"l4_{seed}", layers=4, seed=seed, val_acc=b + gain + n)
    result = check_findings(load_runs(tmp_path), findings=(finding,))
    (row,) = result.checks.to_dict("records")
    margin = 0.05 * np.mean(base)
    deeper = [b + gain + n for b, n in zip(base, noise)]
    ci = st.ttest_rel(deeper, base).confidence_interval(0.95)  # one check: Holm changes nothing
    assert row["margin"] == pytest.approx(margin, rel=1e-12)
    expected = "contradicted" if ci.low > margin else "supported" if ci.high < margin else "inconclusive"
    assert row["verdict"] == expected
    assert expected == {0.015: "supported", 0.06: "contradicted", 0.03: "inconclusive"}[gain]
    assert row["p"] == pytest.approx(st.ttest_1samp(np.subtract(deeper, base), margin).pvalue, rel=1e-9)


def test_missing_runs_and_settings_are_named(tmp_path):
    make_run(tmp_path, "adamw", val_acc=0.6)
    make_run(tmp_path, "post", layers=6, norm="post", val_acc=0.6)
    make_run(tmp_path, "pre6", layers=6, val_acc=0.7, epochs=5)  # another setting: not paired with post
    result = check_findings(load_runs(tmp_path))
    (row,) = _check(result, "adamw_vs_adam", "accuracy").to_dict("records")
    assert row["verdict"] == "missing" and "no completed runs of table2/1" in row["reason"]
    assert _verdict(result, "adamw_vs_adam") == "missing"
    (row,) = _check(result, "prenorm_beats_postnorm").to_dict("records")
    assert row["verdict"] == "missing" and "never at the same setting" in row["reason"]
    (row,) = _check(result, "memory_depth_not_optimizer", "table2/1").to_dict("records")
    assert row["verdict"] == "missing"


def test_budgets_are_never_compared_with_each_other(tmp_path):
    for seed in (1, 2):
        make_run(tmp_path, f"adamw_cpu{seed}", seed=seed, val_acc=0.5, extra={"budget": {"name": "cpu", "epochs": 10}})
        make_run(
            tmp_path,
            f"adam_cpu{seed}",
            optimizer="adam",
            seed=seed,
            val_acc=0.45 + 0.01 * seed,
            extra={"budget": {"name": "cpu", "epochs": 10}},
        )
        make_run(tmp_path, f"adam_full{seed}", optimizer="adam", seed=seed, val_acc=0.6)
    runs = load_runs(tmp_path)
    assert sorted(runs["budget"]) == ["cpu"] * 4 + ["full"] * 2  # a config without budget: full
    result = check_findings(runs)
    assert sorted(set(result.summary["budget"])) == ["cpu", "full"]
    cpu = _check(result, "adamw_vs_adam", "accuracy")
    assert dict(zip(cpu["budget"], cpu["verdict"]))["full"] == "missing"
    (row,) = cpu[cpu["budget"] == "cpu"].to_dict("records")
    assert row["method"] == "paired t" and "adam_full" not in row["runs B"]
    from analysis.findings import to_markdown as findings_markdown

    text = findings_markdown(result)
    assert "### Budget: cpu" in text and "### Budget: full" in text


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
    assert same["verdict"] == "supported"  # 1 MB apart in both seeds, within 5%
    over = _check(result, "no_overfitting")
    by_config = dict(zip(over["check"].str.slice(0, 8), over["verdict"]))
    assert by_config["table2/6"] == "contradicted" and by_config["table2/2"] == "supported"
    assert _verdict(result, "no_overfitting") == "mixed"  # configs 2-5 do not overfit, 6 does


# -- timings: only runs measured alone, on one kind of device ---------------------------------------
@pytest.mark.parametrize("case", ["alone", "under load", "side by side", "other device", "no record"])
def test_time_is_compared_only_between_runs_measured_alone(tmp_path, case):
    for seed in (1, 2, 3):
        adam = {}
        if seed == 2 and case == "under load":
            adam = {"load": 2 + LOAD_SLACK + 1.5}  # a second job on the two cores
        if seed == 2 and case == "other device":
            adam = {"device": "NVIDIA H100"}
        if seed == 2 and case == "side by side":
            adam = {"start": 1_600_000_000}  # the same hour as the run below
            make_run(tmp_path, "other_job", optimizer="sgd", seed=9, start=1_600_000_005, status="failed")
        make_run(tmp_path, f"adamw{seed}", seed=seed, seconds=80.0 + seed)
        make_run(tmp_path, f"adam{seed}", optimizer="adam", seed=seed, seconds=100.0 + 2 * seed, **adam)
    if case == "no record":  # runs from before the load was recorded
        for metrics in tmp_path.glob("*/metrics.json"):
            data = json.loads(metrics.read_text())
            data["history"] = [{k: v for k, v in r.items() if k != "time/load_1m"} for r in data["history"]]
            metrics.write_text(json.dumps(data))
    runs = load_runs(tmp_path)
    result = check_findings(runs)
    (row,) = _check(result, "adamw_vs_adam", "training time").to_dict("records")
    if case == "alone":
        assert row["method"] == "paired t" and row["verdict"] == "supported"  # 20-26 s faster in every seed
        return
    assert row["verdict"] == "not tested" and pd.isna(row.get("p"))
    reason = {
        "under load": "under load (mean 1-min load 4.00 > 2 cores + 0.5)",
        "side by side": "side by side with 1 other run(s)",
        "other device": "different devices",
        "no record": "no load record",
    }[case]
    assert reason in row["reason"], row["reason"]
    # the accuracy check of the same runs is not affected
    (acc,) = _check(result, "adamw_vs_adam", "accuracy").to_dict("records")
    assert acc["verdict"] != "not tested"
    from analysis.figures import figure_specs

    titles = {stem: title for stem, _, _, _, title in figure_specs(runs)}
    assert "times not comparable" in titles["figure4"] and "comparable" not in titles["figure3"]


def test_each_epoch_records_the_machine(tmp_path):
    """RunSummary adds the machine's load, cores and device to every epoch of metrics.json's history."""
    import os
    from types import SimpleNamespace

    from lightning_modules.callbacks import RunSummary

    summary = RunSummary(str(tmp_path / "metrics.json"), task="vit", monitor="val/acc")
    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={"val/acc": 0.5}, current_epoch=0, global_step=3)
    summary.on_train_epoch_start(trainer, None)
    summary.on_train_epoch_end(trainer, None)
    (row,) = summary.history
    assert row["time/load_1m"] == pytest.approx(os.getloadavg()[0], abs=2.0) and row["time/load_1m"] >= 0
    assert row["time/cores"] == os.cpu_count() and row["time/cpus"] == len(os.sched_getaffinity(0))
    assert isinstance(row["time/device"], str) and row["time/device"]
    assert isinstance(row["time/host"], str) and row["time/end_unix"] > 1.6e9


# -- study rows by content ------------------------------------------------------------------------
def _composed(*overrides: str) -> dict:
    """A run's config.yaml as train.py writes it (resolved), composed without Hydra's runtime."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import lmvit.resolvers  # noqa: F401

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    cfg.trainer.default_root_dir = "/runs/x"  # Hydra's output dir: set by the runtime train.py has
    out = {}
    for key in cfg:
        if key in ("paths", "logger", "callbacks", "hydra"):
            continue
        value = OmegaConf.select(cfg, key)
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    out["data"].pop("data_dir", None)
    return out


def test_study_rows_are_matched_by_content(tmp_path):
    cases = {  # overrides without a preset -> the study row they are
        "sgd": (["optimizer=sgd"], "table2/3"),
        "adamw": (["optimizer=adamw"], "table2/2"),
        "adamw_3ep": (["optimizer=adamw", "trainer.max_epochs=3"], "table2/2"),  # a reduced budget: its setting
        "adamw_6l_50": (["optimizer=adamw", "model.num_layers=6", "trainer.max_epochs=50"], "table2/6@50"),
        "momentum_lstm": (["model=lstm", "optimizer=momentum"], "table1/4"),
        "adamw_lr": (["optimizer=adamw", "optimizer.lr=1e-3"], None),  # another lr: not the study's row
        "adamw_wide": (["optimizer=adamw", "model.embed_dim=128"], None),
        "adamw_batch": (["optimizer=adamw", "data.batch_size=64"], None),
    }
    for name, (overrides, _) in cases.items():
        run = tmp_path / name
        run.mkdir()
        config = _composed(*overrides)
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        summary = {"status": "completed", "task": config["task"], "seed": 1, "final": {}, "history": []}
        (run / "metrics.json").write_text(json.dumps(summary))
    runs = load_runs(tmp_path).set_index("name")
    for name, (_, expected) in cases.items():
        got = runs.at[name, "study_config"]
        assert (got if isinstance(got, str) else None) == expected, name


# -- learning-rate grids ---------------------------------------------------------------------------
def test_lr_chosen_on_validation_reported_on_test_with_failures_and_edges(tmp_path):
    grid = {  # optimizer -> lr -> (val acc, test acc) per seed; None: the seed diverged
        "adam": {
            1e-4: [(0.50, 0.49), (0.52, 0.50)],
            3e-4: [(0.60, 0.57), (0.58, 0.56)],
            1e-3: [(0.55, 0.54), (0.57, 0.55)],
        },
        # the best mean val acc is at 1e-1, but one of its two seeds diverged: 1e-2 is chosen,
        # whose upper neighbour has 1 of 2 runs diverged
        "sgd": {1e-3: [(0.30, 0.29), (0.32, 0.31)], 1e-2: [(0.45, 0.44), (0.47, 0.45)], 1e-1: [(0.50, 0.49), None]},
        "lion": {1e-5: [(0.40, 0.39), (0.42, 0.40)], 1e-4: [(0.61, 0.60), (0.63, 0.62)]},  # any optimizer name
    }
    for opt, points in grid.items():
        for lr, seeds_ in points.items():
            for seed, values in enumerate(seeds_, start=1):
                val, test = values if values else (0.1, None)
                make_run(
                    tmp_path,
                    f"{opt}_{lr:g}_{seed}",
                    optimizer=opt,
                    lr=lr,
                    seed=seed,
                    val_acc=val,
                    test_acc=test,
                    epochs=3,
                    train_subset=5000,
                    status="completed" if values else "diverged",
                )
    make_run(
        tmp_path,
        "adam_other_setting",
        optimizer="adam",
        lr=3e-4,
        epochs=3,
        train_subset=5000,
        extra={"data": {"train_subset": 5000, "seed": 1, "batch_size": 64}},
    )  # not part of the grid
    grids = lr_grids(load_runs(tmp_path))
    best = grids.best.set_index(grids.best["optimizer"].str.lower())
    expected = {"adam": 3e-4, "sgd": 1e-2, "lion": 1e-4}
    for opt, lr in expected.items():
        tests = [t for _, t in grid[opt][lr]]
        s = summarize(tests)
        assert best.at[opt, "best lr"] == lr and best.at[opt, "reported metric"] == "test/acc"
        assert best.at[opt, "mean"] == pytest.approx(np.mean(tests), rel=1e-12)
        assert best.at[opt, "val mean"] == pytest.approx(np.mean([v for v, _ in grid[opt][lr]]), rel=1e-12)
        assert (best.at[opt, "ci95 low"], best.at[opt, "ci95 high"]) == (
            pytest.approx(s.ci_low),
            pytest.approx(s.ci_high),
        )
        assert best.at[opt, "n"] == 2 and best.at[opt, "max_epochs"] == 3 and best.at[opt, "train_subset"] == 5000
    assert best.at["sgd", "failures per lr"] == "0 of 2, 0 of 2, 1 of 2"
    assert "upper neighbour lr 0.1: 1 of 2 runs diverged" in best.at["sgd", "note"]
    assert "edge" not in best.at["sgd", "note"]
    assert "upper edge" in best.at["lion", "note"] and "edge" not in best.at["adam", "note"]
    points = grids.points.set_index(["optimizer", "lr"])
    assert points.at[("SGD", 0.1), "failures"] == "1 of 2" and points.at[("SGD", 0.1), "n"] == 1
    assert list(best.sort_values("rank").index) == ["lion", "adam", "sgd"]
    assert best.at["adam", "mean at study lr"] == pytest.approx(0.565)  # test numbers at the study's 3e-4
    # vs the best (lion, seeds 1 and 2): paired over the shared seeds, then Holm over both comparisons
    sgd_test, lion_test = [t for _, t in grid["sgd"][1e-2]], [t for _, t in grid["lion"][1e-4]]
    ref = st.ttest_rel(sgd_test, lion_test)
    assert best.at["sgd", "method vs best"] == "paired t"
    assert best.at["sgd", "p vs best"] == pytest.approx(ref.pvalue, rel=1e-9)
    ps = [best.at["sgd", "p vs best"], best.at["adam", "p vs best"]]
    assert best.at["sgd", "p adjusted vs best"] == pytest.approx(_hand_holm(ps)[ps[0]], rel=1e-9)


def test_lr_grid_presets_sweep_five_points_around_each_optimizers_usual_lr():
    from hydra import compose, initialize_config_dir

    import lmvit.resolvers  # noqa: F401

    presets = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("lrgrid_*.yaml"))
    assert presets == [f"lrgrid_{t}_{o}" for t in ("lstm", "vit") for o in ("adam", "adamw", "momentum", "sgd")]
    study_lr = {"vit": 3e-4, "lstm": 1e-3}
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for preset in presets:
            cfg = compose("train", overrides=[f"experiment={preset}"], return_hydra_config=True)
            lrs = [float(x) for x in str(cfg.hydra.sweeper.params["optimizer.lr"]).split(",")]
            steps = np.diff(np.log10(lrs))
            assert len(lrs) == 5 and steps == pytest.approx(np.full(4, 0.5), abs=0.03), preset
            assert lrs[2] == pytest.approx(cfg.optimizer.lr, rel=1e-12), preset  # centred on its usual lr
            if preset.endswith(("_adam", "_adamw")):
                assert cfg.optimizer.lr == study_lr[cfg.task]
            assert cfg.study_config is None and cfg.hydra.mode.name == "MULTIRUN"
            assert preset.split("_")[-1] == cfg.hydra.runtime.choices.optimizer
            assert cfg.task == preset.split("_")[1] and cfg.trainer.max_epochs == 10
            assert str(cfg.label).endswith(f"lr {cfg.optimizer.lr}")


def test_report_writes_check_and_finding_csvs(tmp_path):
    for seed in (1, 2):
        make_run(tmp_path / "runs", f"adamw{seed}", seed=seed, val_acc=0.6 + 0.01 * seed)
        make_run(tmp_path / "runs", f"adam{seed}", optimizer="adam", seed=seed, val_acc=0.55 + 0.02 * seed)
    write_report(tmp_path / "runs", tmp_path / "report")
    checks = pd.read_csv(tmp_path / "report" / "findings.csv")
    for column in (
        "finding",
        "budget",
        "check",
        "A",
        "B",
        "n A",
        "n B",
        "seeds A",
        "seeds B",
        "mean A",
        "mean B",
        "diff",
        "ci low",
        "ci high",
        "method",
        "p",
        "p adjusted",
        "verdict",
        "reason",
    ):
        assert column in checks.columns, column
    summary = pd.read_csv(tmp_path / "report" / "findings_summary.csv")
    assert {"finding", "budget", "verdict", "kind", "checks", "ran"} <= set(summary.columns)
    assert len(summary) == len(set(checks["finding"])) and set(summary["budget"]) == {"full"}


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


def test_perplexities_are_compared_on_the_log_scale(tmp_path):
    """A perplexity's seed spread grows with its level: the check tests the logs (scipy's paired t
    on log ppl), gives the difference as a ratio A/B, and a relative margin as a ratio."""
    from analysis.findings import Compare, Finding
    from analysis.findings import to_markdown as findings_markdown

    finding = Finding(
        "x",
        "SGD's perplexity is worse, 4 layers no better than 2 by more than 1%",
        "test",
        (
            Compare("vit", "val/ppl", "table2/1", "table2/3", "better"),
            Compare("vit", "val/ppl", "table2/5", "table2/2", "not_better", 0.01),
        ),
    )
    ppl = {  # the spread of SGD's seeds (thousands) swamps a 30x gap on the raw scale
        "adam": [344.0, 349.0, 340.0],
        "sgd": [9000.0, 14000.0, 12100.0],
        "adamw": [345.0, 351.0, 339.0],
        "l4": [344.0, 352.0, 338.5],
    }
    for seed in (1, 2, 3):
        for name, opt, layers in (("adam", "adam", 2), ("sgd", "sgd", 2), ("adamw", "adamw", 2), ("l4", "adamw", 4)):
            run = make_run(tmp_path, f"{name}{seed}", optimizer=opt, layers=layers, seed=seed)
            metrics = json.loads((run / "metrics.json").read_text())
            metrics["final"]["val/ppl"] = ppl[name][seed - 1]
            (run / "metrics.json").write_text(json.dumps(metrics))
    result = check_findings(load_runs(tmp_path), findings=(finding,))
    rows = {r["check"][:8]: r for r in result.checks.to_dict("records")}
    sgd, deeper = rows["table2/1"], rows["table2/5"]
    ref = st.ttest_rel(np.log(ppl["adam"]), np.log(ppl["sgd"]))
    ci = ref.confidence_interval(0.95)
    assert sgd["scale"] == "log" and sgd["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (sgd["ci low"], sgd["ci high"]) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    assert sgd["mean A"] == pytest.approx(np.mean(ppl["adam"])) and sgd["mean B"] == pytest.approx(np.mean(ppl["sgd"]))
    assert st.ttest_rel(ppl["adam"], ppl["sgd"]).pvalue > 0.01  # the raw scale would be far weaker
    margin = math.log(1.01)
    shifted = st.ttest_1samp(np.log(ppl["adamw"]) - np.log(ppl["l4"]), margin)  # improvement = log(B / A)
    assert deeper["margin"] == pytest.approx(margin, rel=1e-12)
    assert deeper["p"] == pytest.approx(shifted.pvalue, rel=1e-9)
    text = findings_markdown(result)
    ratio = math.exp(np.mean(np.log(ppl["adam"]) - np.log(ppl["sgd"])))
    assert f"ratio A/B {ratio:.4g}" in text and "margin: ratio 1.01" in text
