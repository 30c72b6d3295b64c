"""Optimizers, tuned equally (analysis/tuning.py, conf/tuning/space.yaml): the budget-curve estimator
against exact enumeration, the speed-up interpolation against hand-computed numbers, the same Sobol
point for every optimizer, the space centred on each optimizer's usual setting, the planned sweeps
composing in train.py, the report on hand-made runs, and a tiny search end to end."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf
from scipy import stats as sps
from scipy.stats import qmc

from analysis import tuning
from lmvit.errors import ConfigError, UserError
from tests.helpers import ROOT


def rel(a: float, b: float, tol: float = 1e-9) -> bool:
    return abs(a - b) <= tol * max(abs(a), abs(b), 1e-300)


# --- Dodge et al.'s estimator -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["max", "min"])
def test_expected_best_equals_exact_enumeration(mode):
    values = [0.31, 0.52, 0.47, 0.52, 0.12]
    best = max if mode == "max" else min
    got = tuning.expected_best(values, mode)
    n = len(values)
    for k in range(1, n + 1):  # every ordered draw of k trials with replacement, equally likely
        exact = np.mean([best(draw) for draw in itertools.product(values, repeat=k)])
        assert rel(got[k - 1], exact, 1e-12), (k, got[k - 1], exact)
    assert rel(got[0], np.mean(values), 1e-12)  # one trial: the mean
    assert np.all(np.diff(got) >= 0 if mode == "max" else np.diff(got) <= 0)


def test_expected_best_against_monte_carlo():
    rng = np.random.default_rng(0)
    values = rng.normal(size=8)
    got = tuning.expected_best(values.tolist(), "max")
    draws = rng.choice(values, size=(200_000, 3))
    assert abs(got[2] - draws.max(axis=1).mean()) < 0.01 * np.ptp(values)


# --- speed-up -----------------------------------------------------------------------------------


def test_steps_to_reach_log_linear_by_hand():
    curve = [(200, 1.5), (100, 2.0), (400, 1.2)]  # order does not matter
    steps, mark = tuning.steps_to_reach(curve, 1.35)  # halfway between 200 and 400 in log steps
    assert mark == "" and rel(steps, 200 * math.sqrt(2))
    steps, mark = tuning.steps_to_reach(curve, 1.9)  # 1/5 of the way from 100 to 200
    assert mark == "" and rel(steps, 100 * 2**0.2)
    assert tuning.steps_to_reach(curve, 1.1) == (400, ">")  # beyond the 2x point: no extrapolation
    assert tuning.steps_to_reach(curve, 2.5) == (100, "<")
    steps, mark = tuning.steps_to_reach(curve, 1.5)  # on a point: that point
    assert mark == "" and rel(steps, 200)


def test_speedups_per_seed_and_interval_against_scipy():
    reference = {s: [(100, 2.0), (200, 1.5), (400, 1.2)] for s in (1, 2, 3)}
    runs = {1: (200, 1.35), 2: (200, 1.5), 3: (200, 1.9), 4: (200, 1.0)}  # seed 4: no reference, unpaired
    per_seed = tuning.speedups(reference, runs)
    assert sorted(per_seed) == [1, 2, 3]
    expected = [math.sqrt(2), 1.0, 2**0.2 / 2]
    for seed, want in zip((1, 2, 3), expected):
        assert rel(per_seed[seed][0], want) and per_seed[seed][1] == ""
    summary = tuning.summarize_speedup(per_seed)
    logs = np.log(expected)
    low, high = sps.t.interval(0.95, df=2, loc=logs.mean(), scale=sps.sem(logs))
    assert rel(summary["speedup"], math.exp(logs.mean()))
    assert rel(summary["low"], math.exp(low)) and rel(summary["high"], math.exp(high))
    beyond = tuning.summarize_speedup(tuning.speedups(reference, {1: (200, 1.1), 2: (200, 1.0)}))
    assert beyond["text"] == "> 2x" and math.isnan(beyond["speedup"])
    assert rel(beyond["bound"], 2.0) and beyond["side"] == ">"  # the figure draws it as an arrow at 2x
    below = tuning.summarize_speedup(tuning.speedups(reference, {1: (200, 2.5), 2: (200, 2.1)}))
    assert below["text"] == "< 0.5x" and rel(below["bound"], 0.5) and below["side"] == "<"
    # one seed below AdamW's 1/2x run, one at sqrt(2): the geometric mean with the first at its bound
    # (0.5) bounds the geometric mean from above
    mixed = tuning.summarize_speedup(tuning.speedups(reference, {1: (200, 1.35), 2: (200, 2.5)}))
    assert rel(mixed["bound"], 2**-0.25) and mixed["side"] == "<" and math.isnan(mixed["speedup"])
    assert mixed["text"] == "< 0.84x (1 of 2 seeds beyond the reference's steps)"
    both = tuning.summarize_speedup(tuning.speedups(reference, {1: (200, 1.0), 2: (200, 2.5)}))
    assert both["text"] == "beyond the reference's steps on both sides" and math.isnan(both["bound"])


def test_holm_by_hand():
    assert np.allclose(tuning.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    assert math.isnan(tuning.holm([math.nan, 0.2])[0]) and rel(tuning.holm([math.nan, 0.2])[1], 0.2)


def test_steps_setting():
    assert tuning.steps_setting(0.5, 10) == (5, 1.0)
    assert tuning.steps_setting(2.0, 3) == (6, 1.0)
    assert tuning.steps_setting(0.5, 3) == (3, 0.5)  # 1.5 epochs: half of every epoch's batches
    with pytest.raises(ConfigError, match="speedup_factors"):
        tuning.steps_setting(1.5, 3)


# --- the space ----------------------------------------------------------------------------------


def _trials(sweep):
    """The dicts of a sweep's ``+trial=`` override, parsed back."""
    text = next(o for o in sweep.overrides if o.startswith("+trial="))[len("+trial=") :]
    dicts = [part.strip("{}") for part in text.split("},{")]
    return [{k: _value(v) for k, v in (kv.split(":", 1) for kv in d.split(","))} for d in dicts]


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def test_same_sobol_point_for_every_optimizer():
    space = tuning.load_space()
    sweeps = tuning.plan("vit", "search", optimizers=["adamw", "lion", "adam"], trials=4, space=space)
    u = qmc.Sobol(d=3, scramble=True, seed=space["seed"]).random(4)  # independent of the module
    factors = {}
    for sweep in sweeps:
        usual = tuning.usual_settings("vit", sweep.optimizer, space)
        trials = _trials(sweep)
        assert [t["k"] for t in trials] == [0, 1, 2, 3] and all(t["optimizer"] == sweep.optimizer for t in trials)
        factors[sweep.optimizer] = [t["lr"] / usual["lr"] for t in trials]
        for t, point in zip(trials, u):  # lr factor 10^(2u - 1), warm-up 0.2u
            assert rel(t["lr"] / usual["lr"], 10 ** (2 * point[0] - 1), 1e-3)
            assert rel(t["warmup_fraction"] + 1, 0.2 * point[2] + 1, 1e-3)
            if usual["weight_decay"]:
                assert rel(t["weight_decay"] / usual["weight_decay"], 10 ** (2 * point[1] - 1), 1e-3)
            else:
                assert t["weight_decay"] == 0  # Adam: no weight decay, as in the study
    assert np.allclose(factors["adamw"], factors["lion"], rtol=1e-3)
    assert np.allclose(factors["adamw"], factors["adam"], rtol=1e-3)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "schedulefree_adamw"])
def test_near_a_bound_from_the_trials_own_settings(optimizer):
    """A best trial's setting in the outer tenth of its range is marked, read here from the trial's
    values against the usual setting (not from the Sobol point): lr and weight decay as log factors of
    10^-1..10^1, warm-up in 0..0.2, whose bound at 0 (no warm-up) is a limit, not marked."""
    space = tuning.load_space()
    (sweep,) = tuning.plan("lstm", "search", optimizers=[optimizer], space=space)
    usual = tuning.usual_settings("lstm", optimizer, space)
    marked = []
    for t in _trials(sweep):
        want = []
        for name in ("lr", "weight_decay"):
            if usual[name]:
                position = (math.log10(t[name] / usual[name]) + 1) / 2  # 0 .. 1 over the log range
                want += [f"{name} low"] if position < 0.1 else [f"{name} high"] if position >= 0.9 else []
        if t.get("warmup_fraction") is not None and t["warmup_fraction"] >= 0.18:
            want.append("warmup_fraction high")
        assert tuning.near_bounds(space, t["k"], t) == want, t
        marked += want
    assert "lr high" in marked and "lr low" in marked  # 16 Sobol points reach both ends of lr's range
    assert ("weight_decay low" in marked) == (optimizer != "adam")  # Adam's weight decay stays 0
    assert ("warmup_fraction high" in marked) == (optimizer != "schedulefree_adamw")  # no warm-up searched


@pytest.mark.parametrize("workload,model", [("vit", "vit"), ("lstm", "lstm")])
def test_space_centred_on_each_optimizers_usual_setting(workload, model):
    """The centre of every log range (u = 0.5) is the optimizer's usual lr (the model's lr x its
    lr_scale, read from the conf files here; SGD's and momentum's: their learning-rate grid's
    centre, 100x and 10x the model's) and its own weight decay."""
    space = tuning.load_space()
    model_lr = float(OmegaConf.load(ROOT / "conf" / "model" / f"{model}.yaml").optimizer.lr)
    grid_factor = {"sgd": 100.0, "momentum": 10.0}  # conf/experiment/lrgrid_<model>_<name>.yaml's centres
    names = tuning.optimizer_names()
    assert sorted(names) == sorted(p.stem for p in (ROOT / "conf" / "optimizer").glob("*.yaml"))
    assert names[0] == "adamw"
    for name in names:
        raw = OmegaConf.load(ROOT / "conf" / "optimizer" / f"{name}.yaml")
        parent = raw.get("defaults", [None])[0]  # momentum: sgd's file with momentum 0.9
        merged = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "optimizer" / f"{parent}.yaml"), raw) if parent else raw
        usual = tuning.usual_settings(workload, name, space)
        assert rel(usual["lr"], model_lr * grid_factor.get(name, 1.0))
        assert rel(usual["lr_scale"], float(merged.get("lr_scale", 1.0)))
        assert rel(usual["weight_decay"] + 1, float(merged.weight_decay) + 1)
        centre = tuning.trial_values(space, usual, np.array([0.5, 0.5, 0.5]))
        assert rel(centre["lr"], usual["lr"], 1e-3)
        assert rel(centre["weight_decay"] + 1e-12, usual["weight_decay"] + 1e-12, 1e-3)
        assert ("warmup_fraction" in centre) == (name not in space["unscheduled"])


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="Unknown workload 'cnn'"):
        tuning.plan("cnn", "search")
    with pytest.raises(ConfigError, match="no conf/optimizer/adagrad.yaml"):
        tuning.plan("vit", "search", optimizers=["adagrad"])
    with pytest.raises(UserError, match="has 0 of 16 trials done.*--stage search"):
        tuning.plan("vit", "confirm", log_dir=tmp_path, optimizers=["adamw"])
    bad = tmp_path / "space.yaml"
    bad.write_text("trials: 4\nseeds: [1]\ndimensions: {lr: {log_factor: [0, 10]}}\n")
    with pytest.raises(ConfigError, match="dimensions.lr"):
        tuning.load_space(bad)
    bad.write_text("trials: 4\nseeds: [1]\ndimensions: {lr: {log_factor: [0.1, 10]}}\n")
    with pytest.raises(ConfigError, match="Invalid setting precision=None in .*space.yaml: name the trainer.precision"):
        tuning.load_space(bad)


# --- the planned commands compose ---------------------------------------------------------------


def _composed(sweep, trial: str, seed: int) -> dict:
    """The config train.py composes for one job of ``sweep``: its overrides with ``trial`` and ``seed``."""
    overrides = [o for o in sweep.overrides if not o.startswith(("+trial=", "seed="))]
    proc = subprocess.run(
        [sys.executable, "train.py", *overrides, trial, f"seed={seed}", "--cfg", "job", "--resolve"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return yaml.safe_load(proc.stdout)


@pytest.mark.parametrize("workload", ["vit", "lstm"])
def test_a_trial_composes_in_train_py(workload):
    sweep = tuning.plan(workload, "search", optimizers=["schedulefree_adamw" if workload == "lstm" else "lion"],
                        trials=2)[0]  # fmt: skip
    first = _trials(sweep)[1]
    cfg = _composed(sweep, "+trial={" + ",".join(f"{k}:{v}" for k, v in first.items()) + "}", seed=0)
    assert rel(cfg["optimizer"]["lr"], first["lr"]) and rel(cfg["optimizer"]["weight_decay"], first["weight_decay"])
    assert cfg["trial"]["k"] == 1 and cfg["budget"] == "cpu" and cfg["study_config"] is None
    assert cfg["trainer"]["precision"] == tuning.load_space()["precision"]  # not the machine's default
    if workload == "vit":
        assert cfg["trainer"]["max_epochs"] == 5 and cfg["data"]["train_subset"] == 5000  # the search budget
        assert rel(cfg["scheduler"]["warmup_fraction"] + 1, first["warmup_fraction"] + 1)
        assert cfg["optimizer"]["_target_"] == "lion_pytorch.Lion"
    else:
        assert cfg["trainer"]["max_epochs"] == 1 and cfg["scheduler"] is None  # schedule-free: no schedule
        assert cfg["data"]["train_file"] == "wiki.valid.tokens"


@pytest.mark.parametrize(("workload", "epochs"), [("vit", 10), ("lstm", 3)])
def test_speedup_runs_train_their_factor_of_the_steps(workload, epochs, tmp_path):
    """AdamW's speed-up runs, composed by train.py from the planned override as printed: 1/2x and 2x
    the confirm runs' training batches (a whole epoch's fraction is the float 1.0: an int 1 would be
    one batch an epoch)."""
    search = tmp_path / "tuning" / workload / "search" / "adamw"
    for k in (0, 1):
        _fake_run(search, f"s{k}", optimizer="adamw", stage="search", k=k, seed=0, score=0.5 + 0.1 * k, loss=1.0,
                  steps=10)  # fmt: skip
    sweep = tuning.plan(workload, "speedup", log_dir=tmp_path, optimizers=["adamw"], trials=2)[0]
    text = next(o for o in sweep.overrides if o.startswith("+trial="))[len("+trial=") :]
    batches_run = {}
    for raw in text.split("},{"):
        cfg = _composed(sweep, "+trial={" + raw.strip("{}") + "}", seed=1)  # as the sweep passes it
        limit = cfg["trainer"]["limit_train_batches"]
        assert isinstance(limit, float) and 0 < limit <= 1.0, limit  # a fraction, never a count
        assert cfg["trial"]["k"] == 1  # the best search trial
        batches_run[cfg["trial"]["steps"]] = cfg["trainer"]["max_epochs"] * limit
    assert batches_run == {0.5: epochs * 0.5, 2.0: epochs * 2.0}, batches_run  # in epochs' worth of batches


# --- the report on hand-made runs ---------------------------------------------------------------


def _fake_run(root, name, *, optimizer, stage, k, seed, score, loss, steps, steps_factor=None, status="completed",
              precision="bf16-mixed", device="CPU A", seconds=1.0, load=None):  # fmt: skip
    run = root / name
    run.mkdir(parents=True)
    trial = {"optimizer": optimizer, "stage": stage, "k": k, "lr": 1e-3, "weight_decay": 5e-4, "warmup_fraction": 0.05}
    if steps_factor is not None:
        trial["steps"] = steps_factor
    cfg = {"task": "vit", "seed": seed, "monitor": {"metric": "val/acc", "mode": "max"},
           "optimizer": {"lr": 1e-3, "lr_scale": 2.0}, "trial": trial}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    metrics = {"status": status, "task": "vit", "final": {"val/acc": score, "val/loss": loss},
               "history": [{"epoch": 0, "step": steps, "time/device": device}], "train_seconds": seconds,
               "precision": precision}  # fmt: skip
    if load is not None:  # the machine's 1-minute load during the run, on 2 cores
        metrics["history"][0] |= {"time/load_1m": load, "time/cores": 2}
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_report_on_hand_made_runs(tmp_path):
    logs = tmp_path / "tuning" / "vit"
    for opt, scores in {"adamw": [0.5, 0.6], "sgd": [0.3, 0.4]}.items():
        for k, s in enumerate(scores):
            _fake_run(logs / "search" / opt, f"s{k}", optimizer=opt, stage="search", k=k, seed=0, score=s, loss=1.0,
                      steps=50, device="CPU B" if opt == "sgd" else "CPU A")  # fmt: skip
    # trial 2 still running: no result yet, neither a trial nor a failure; trial 3 diverged: a result,
    # scored the failed score (chance accuracy)
    for k, status in ((2, "running"), (3, "diverged")):
        _fake_run(logs / "search" / "sgd", f"s{k}", optimizer="sgd", stage="search", k=k, seed=0, score=None,
                  loss=None, steps=20, status=status)  # fmt: skip
    for seed in (1, 2, 3):  # AdamW at 0.5x, 1x, 2x: losses 2.0, 1.5, 1.2 at 100, 200, 400 steps
        _fake_run(logs / "confirm" / "adamw", f"t{seed}", optimizer="adamw", stage="confirm", k=1, seed=seed,
                  score=0.6 + 0.01 * seed, loss=1.5, steps=200)  # fmt: skip
        _fake_run(logs / "confirm" / "adamw", f"d{seed}", optimizer="adamw", stage="confirm", k="default",
                  seed=seed, score=0.5 + 0.02 * seed, loss=1.7, steps=200)  # fmt: skip
        for f, loss, steps in ((0.5, 2.0, 100), (2.0, 1.2, 400)):
            _fake_run(logs / "speedup" / "adamw", f"{f}_{seed}", optimizer="adamw", stage="speedup", k=1,
                      seed=seed, score=0.6, loss=loss, steps=steps, steps_factor=f)  # fmt: skip
        sgd_loss = {1: 1.35, 2: 1.5, 3: 1.9}[seed]
        _fake_run(logs / "confirm" / "sgd", f"t{seed}", optimizer="sgd", stage="confirm", k=1, seed=seed,
                  score=0.4, loss=sgd_loss, steps=200)  # fmt: skip
        _fake_run(logs / "confirm" / "sgd", f"d{seed}", optimizer="sgd", stage="confirm", k="default", seed=seed,
                  score=0.3, loss=2.0, steps=200)  # fmt: skip
        lion_loss = {1: 1.8, 2: 1.85, 3: 1.9}[seed]  # every seed above tuned AdamW's 1.5
        _fake_run(logs / "confirm" / "lion", f"t{seed}", optimizer="lion", stage="confirm", k=0, seed=seed,
                  score=0.4, loss=lion_loss, steps=200)  # fmt: skip
        _fake_run(logs / "confirm" / "lion", f"d{seed}", optimizer="lion", stage="confirm", k="default", seed=seed,
                  score=0.3, loss=2.0, steps=200)  # fmt: skip
    bench = tmp_path / "bench.jsonl"
    lines = [  # the last line of the workload counts; another workload's, or one without, does not
        {"bench": "optimizers", "baseline": "adamw", "paired_ratio": {"sgd": 0.5}},
        {"bench": "optimizers", "baseline": "adamw", "paired_ratio": {"sgd": 0.6}, "workload": "vit"},
        {
            "bench": "optimizers",
            "baseline": "adamw",
            "paired_ratio": {"sgd": 0.8},
            "workload": "vit",
            "machine": {"cpu_model": "CPU A (GenuineIntel 6/1, amx_bf16)"},
        },
        {"bench": "optimizers", "baseline": "adamw", "paired_ratio": {"sgd": 0.7}, "workload": "lstm"},
    ]
    bench.write_text("".join(json.dumps(line) + "\n" for line in lines))
    md = tuning.report([logs], tmp_path / "out", bench)
    import pandas as pd

    table = pd.read_csv(tmp_path / "out" / "tuning_vit.csv").set_index("optimizer")
    assert rel(table.loc["adamw", "speedup_steps"], 1.0)  # the reference against itself
    want = math.exp(np.mean(np.log([math.sqrt(2), 1.0, 2**0.2 / 2])))
    assert rel(table.loc["sgd", "speedup_steps"], want)
    assert rel(table.loc["sgd", "speedup_wallclock"], want / 0.8)
    assert rel(table.loc["adamw", "tuned_val/acc"], 0.62) and rel(table.loc["adamw", "default_val/acc"], 0.54)
    assert rel(table.loc["adamw", "p_tuned_vs_default"], sps.ttest_rel([0.61, 0.62, 0.63], [0.52, 0.54, 0.56]).pvalue)
    # against tuned AdamW at the same steps: paired t on the final losses, Holm over SGD and Lion
    p_sgd = sps.ttest_rel([1.35, 1.5, 1.9], [1.5] * 3).pvalue
    p_lion = sps.ttest_rel([1.8, 1.85, 1.9], [1.5] * 3).pvalue
    assert rel(table.loc["sgd", "p_vs_ref"], p_sgd) and rel(table.loc["lion", "p_vs_ref"], p_lion)
    assert p_lion * 2 < 0.05 < p_sgd  # so Holm: Lion 2 p, SGD max(that, p)
    assert rel(table.loc["lion", "p_vs_ref_holm"], 2 * p_lion) and rel(table.loc["sgd", "p_vs_ref_holm"], p_sgd)
    assert table.loc["lion", "verdict"] == "slower" and table.loc["sgd", "verdict"] == "inconclusive"
    assert table.loc["adamw", "verdict"] == "reference"
    budget = pd.read_csv(tmp_path / "out" / "tuning_vit_budget.csv")
    sgd = budget[budget.optimizer == "sgd"]["expected_best_val/acc"].tolist()
    # SGD's trials: 0.3, 0.4 and the diverged one at chance (0.1); E[max of k draws], enumerated
    exact = [np.mean([max(d) for d in itertools.product([0.3, 0.4, 0.1], repeat=k)]) for k in (1, 2, 3)]
    assert np.allclose(sgd, exact)
    search = pd.read_csv(tmp_path / "out" / "tuning_vit_search.csv").set_index("optimizer")
    assert (
        search.loc["sgd", "trials"] == 3 and search.loc["sgd", "failed"] == 1 and search.loc["sgd", "best_trial"] == 1
    )
    assert rel(search.loc["sgd", "best_val/acc"], 0.4) and rel(search.loc["sgd", "median_val/acc"], 0.3)
    assert "| sgd | 3 of 16 (1 failed) | 0.4 | 0.3 |" in md.read_text()
    # the best trial of both, trial 1, lies in the low tenth of lr's range (Sobol point 1, from scipy)
    assert qmc.Sobol(d=3, scramble=True, seed=tuning.load_space()["seed"]).random(2)[1][0] < 0.1
    assert search.loc["sgd", "near_bound"] == "lr low" and "| lr low |" in md.read_text()
    assert "## Optimizers, tuned equally" in md.read_text()
    # the CPUs the runs were made on, and the one the time per step was measured on
    assert "Runs made on: CPU A: 28 runs; CPU B: 2 runs." in md.read_text()
    assert "paired, measured on CPU A (GenuineIntel 6/1, amx_bf16))." in md.read_text()
    assert (tmp_path / "out" / "tuning_vit_budget.png").stat().st_size > 0
    assert (tmp_path / "out" / "tuning_vit_speedup.png").stat().st_size > 0
    assert "![speed-ups over tuned adamw](tuning_vit_speedup.png)" in md.read_text()
    # the one-line verdict waits for every optimizer of conf/optimizer/ (three of eleven ran here) and
    # says how far each stage got: search, AdamW's 2 and SGD's 3 (the diverged trial has its result,
    # the running one not) ...
    n = len(tuning.optimizer_names())
    assert (
        f"**Verdict** (vit): none yet; the search stage has 5 of {16 * n} runs, the confirm stage 18 of {6 * n}, "
        "the speed-up stage 6 of 6."
    ) in md.read_text()
    # ... and names the faster, slower and inconclusive ones once they all have
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tuning, "optimizer_names", lambda reference="adamw": ["adamw", "lion", "sgd"])
        text = tuning.report([logs], tmp_path / "all", bench).read_text()
    logs_lion = np.log(2) * np.array([-0.6, -0.7, -0.8])  # lion's speed-ups 2^(w - 1), w = (2 - loss) / 0.5
    lo, hi = np.exp(sps.t.interval(0.95, df=2, loc=logs_lion.mean(), scale=sps.sem(logs_lion)))
    logs_sgd = np.log([math.sqrt(2), 1.0, 2**0.2 / 2])
    slo, shi = np.exp(sps.t.interval(0.95, df=2, loc=logs_sgd.mean(), scale=sps.sem(logs_sgd)))
    assert (
        "**Verdict** (vit), 2 optimizers against tuned adamw, each with 16 search trials and seeds 1, 2, 3 (final "
        f"validation loss, paired by seed, Holm-adjusted): faster: none; slower: lion at {2**-0.7:.2f}x [{lo:.2f}, "
        f"{hi:.2f}] in steps; inconclusive: sgd at {want:.2f}x [{slo:.2f}, {shi:.2f}] in steps and {want / 0.8:.2f}x "
        "wall-clock. Tuned adamw's val/acc 0.62 ["
    ) in text
    # a speed-up run that did not train its factor x the confirm run's steps is refused, by name
    _fake_run(logs / "speedup" / "adamw", "broken", optimizer="adamw", stage="speedup", k=1, seed=1, score=0.2,
              loss=2.2, steps=20, steps_factor=2.0)  # fmt: skip
    with pytest.raises(UserError, match=r"The speed-up run .*broken trained 20 steps, not 2 x the 200 .* \(400\)"):
        tuning.report([logs], tmp_path / "out", bench)
    shutil.rmtree(logs / "speedup" / "adamw" / "broken")
    # one comparison, one arithmetic: a run of another precision (a machine's default) is refused
    _fake_run(logs / "search" / "lion", "s0", optimizer="lion", stage="search", k=0, seed=0, score=0.5, loss=1.0,
              steps=50, precision="32-true")  # fmt: skip
    with pytest.raises(UserError, match=r"The vit runs mix precisions \(\d+ runs in bf16-mixed, 1 runs in 32-true\)"):
        tuning.report([logs], tmp_path / "out", bench)


# --- a tiny search, end to end -----------------------------------------------------------------


@pytest.mark.slow
def test_tiny_search_runs_and_its_rerun_skips(tmp_path, data_dir):
    tiny = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "trainer.max_epochs=1",
            "data.train_subset=256", "data.num_workers=0", "test=false", "logger=csv",
            f"paths.log_dir={tmp_path}", f"data.data_dir={data_dir}"]  # fmt: skip
    args = [sys.executable, "-m", "analysis.tuning", "run", "vit", "--stage", "search", "--optimizers", "adamw,sgd",
            "--trials", "2", "--log-dir", str(tmp_path), *tiny]  # fmt: skip
    published, fresh = tmp_path / "published", tmp_path / "fresh"
    first = subprocess.run([*args, "--publish", str(published)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-4000:]
    records = tuning.load_records([tmp_path / "tuning" / "vit" / "search"])
    assert sorted((r["optimizer"], r["k"]) for r in records) == [("adamw", "0"), ("adamw", "1"), ("sgd", "0"),
                                                                 ("sgd", "1")]  # fmt: skip
    assert all(r["status"] == "completed" and r["steps"] == 2 for r in records)
    assert not list((tmp_path / "tuning").rglob("*.ckpt"))  # each job's checkpoints went with its result
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("jobs done, skipped") == 2, again.stdout
    assert len(tuning.load_records([tmp_path / "tuning" / "vit" / "search"])) == 4
    # --publish: after each sweep its records went to <publish>/<workload>/<stage>/<optimizer>, no checkpoint
    assert first.stdout.count("finished runs published to") == 2, first.stdout
    assert sorted(p.parent.parent.relative_to(published).as_posix() for p in published.rglob("metrics.json")) == [
        "vit/search/adamw", "vit/search/adamw", "vit/search/sgd", "vit/search/sgd"]  # fmt: skip
    assert not list(published.rglob("*.ckpt")) and not list(published.rglob("events.out.*"))
    # a fresh clone (scripts/study_cpu.sh, step 0): the published records copied back into an empty log
    # folder are results, and the rerun trains nothing
    copy = subprocess.run([sys.executable, "scripts/publish_runs.py", str(published), str(fresh / "tuning")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert copy.returncode == 0 and "4 finished runs published" in copy.stdout, copy.stderr
    restored = [*args[: args.index("--log-dir") + 1], str(fresh), *tiny]
    again = subprocess.run(restored, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("jobs done, skipped") == 2, again.stdout
    # the confirm stage reads the search: each optimizer's best trial, and the usual setting
    confirm = tuning.plan("vit", "confirm", tmp_path, tiny, ["adamw", "sgd"], trials=2)
    for sweep in confirm:
        scores = {r["k"]: r["score"] for r in records if r["optimizer"] == sweep.optimizer}
        assert [t["k"] for t in _trials(sweep)] == [int(max(scores, key=scores.get)), "default"]
        assert sweep.sweep_dir == tmp_path / "tuning" / "vit" / "confirm" / sweep.optimizer


@pytest.mark.slow
def test_sigterm_to_the_group_publishes_what_finished_and_the_rerun_continues(tmp_path, data_dir):
    """A SIGTERM to the command's process group (how a session or a scheduler stops it): the running
    job saves where it stands, the command waits for that, publishes the finished runs, says how to
    continue and exits 143; the same command then resumes the stopped job and finishes."""
    import signal
    import time

    tiny = ["trainer.limit_train_batches=60", "trainer.limit_val_batches=2", "trainer.max_epochs=1",
            "trainer.precision=32-true",  # fast on every CPU (bf16 is slow without bf16 instructions)
            "data.train_subset=7680", "data.num_workers=0", "test=false", "logger=csv",
            f"paths.log_dir={tmp_path}", f"data.data_dir={data_dir}"]  # fmt: skip
    published = tmp_path / "published"
    args = [sys.executable, "-m", "analysis.tuning", "run", "vit", "--stage", "search", "--optimizers", "adamw",
            "--trials", "2", "--log-dir", str(tmp_path), "--publish", str(published), *tiny]  # fmt: skip
    sweep = tmp_path / "tuning" / "vit" / "search" / "adamw"

    def statuses() -> list[str]:
        return sorted(str((json.loads(m.read_text()) or {}).get("status")) for m in sweep.rglob("metrics.json"))

    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 900

    def training() -> bool:  # both trials past their set-up: each progress log says how long training takes
        return sum("Training:" in log.read_text() for log in sweep.rglob("train.log")) == 2

    # the first trial done, the second training: a run writes metrics.json first at its first epoch's
    # end, which for these one-epoch trials is also where it completes, so the second one has none yet
    while statuses() not in (["completed"], ["completed", "running"]) or not training():
        assert proc.poll() is None and time.monotonic() < deadline, statuses()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Stopped (SIGTERM); rerun the same command to continue" in err
    # the second trial saved where it stood, or (a tiny run) finished its last batches first: either
    # way what was published is exactly the runs with a result, and nothing was killed mid-save
    after = statuses()
    assert after[0] == "completed" and after[1] in ("interrupted", "completed"), after
    done = after.count("completed")
    assert f"search adamw: {done} finished runs published to" in out, out[-1500:]
    assert len(list(published.rglob("metrics.json"))) == done
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert statuses() == ["completed", "completed"] and len(list(published.rglob("metrics.json"))) == 2
    if done == 1:  # the stopped trial is resumed, the finished one skipped
        assert "search adamw: 1 of 2 jobs to run" in again.stdout, again.stdout[-1500:]


def test_a_stage_with_failed_trials_goes_on_to_the_next(tmp_path, monkeypatch, capsys):
    """A diverged search trial is a result (its sweep exits 1, as any sweep with a failed job): the
    confirm stage still runs; a stage left with jobs without a result stops the command with one line."""
    for opt in ("adamw", "sgd"):
        for k in (0, 1):
            status = "diverged" if (opt, k) == ("sgd", 1) else "completed"
            _fake_run(tmp_path / "tuning" / "vit" / "search" / opt, f"s{k}", optimizer=opt, stage="search", k=k,
                      seed=0, score=0.5 + 0.1 * k, loss=1.0, steps=50, status=status)  # fmt: skip
    ran = []

    def fake_run_stage(sweeps, **kwargs):
        ran.append(sweeps[0].stage)
        return [f"{s.stage} {s.optimizer}: train.py exited 1; rerun the same command to continue" for s in sweeps]

    monkeypatch.setattr(tuning, "run_stage", fake_run_stage)
    argv = ["run", "vit", "--stage", "search", "--stage", "confirm", "--optimizers", "adamw,sgd", "--trials", "2",
            "--log-dir", str(tmp_path)]  # fmt: skip
    assert tuning.main(argv) == 1
    assert ran == ["search", "confirm"]
    n = 2 * len(tuning.load_space()["seeds"])  # the best trial and the usual setting, each with every seed
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: confirm stage unfinished (adamw {n}, sgd {n} jobs without a result); rerun the same command to "
        "continue"
    ]


# --- the time per step of the wall-clock speed-up ------------------------------------------------


@pytest.mark.slow
def test_optimizers_bench_times_the_workloads_own_step(tmp_path, data_dir):
    """bench/optimizers.py --workload lstm builds the LSTM as the tuning's runs do (bf16 at budget=cpu)
    and its line is the one the report reads for that workload, and only for it."""
    out = tmp_path / "bench.jsonl"
    args = [sys.executable, "bench/optimizers.py", "--workload", "lstm", "--optimizers", "adamw", "sgd",
            "--repeats", "1", "--warmup", "0", "--opt-repeats", "1", "--opt-steps", "2", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "DATA_DIR": str(data_dir)}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [json.loads(x) for x in out.read_text().splitlines()][-1]
    assert line["bench"] == "optimizers" and line["workload"] == "lstm" and line["precision"] == "bf16-mixed"
    # AdamW: exp_avg and exp_avg_sq in fp32 (+ a 4-byte step counter per tensor); SGD: nothing
    assert rel(line["state_bytes"]["adamw"], 2 * 4 * line["params"], 1e-5) and line["state_bytes"]["sgd"] == 0
    assert line["layers"] == 1 and line["batch_size"] == 16  # Table 1 config 1's LSTM
    assert tuning.step_time_ratios(out, "lstm") == {"adamw": 1.0, "sgd": line["paired_ratio"]["sgd"]}
    assert tuning.step_time_ratios(out, "vit") == {}


def test_status_counts_the_jobs_with_a_result(tmp_path):
    logs = tmp_path / "tuning" / "vit"
    for k, status in enumerate(["completed", "completed", "diverged", "running"]):
        _fake_run(logs / "search" / "adamw", f"s{k}", optimizer="adamw", stage="search", k=k, seed=0, score=0.5,
                  loss=1.0, steps=50, status=status)  # fmt: skip
    _fake_run(logs / "confirm" / "adamw", "c1", optimizer="adamw", stage="confirm", k=1, seed=1, score=0.5, loss=1.0,
              steps=50)  # fmt: skip
    _fake_run(logs / "search" / "sgd", "s0", optimizer="sgd", stage="search", k=0, seed=0, score=0.5, loss=1.0,
              steps=50, device="CPU B", seconds=9.0)  # fmt: skip
    rows = {(r["stage"], r["optimizer"]): r for r in tuning.status("vit", tmp_path, ["adamw", "sgd"], device="CPU A")}
    space = tuning.load_space()
    search = rows[("search", "adamw")]
    assert (search["planned"], search["done"], search["failed"], search["unfinished"]) == (space["trials"], 3, 1, 1)
    assert search["median_seconds"] == 1.0 and search["timed_here"]  # the two completed ones (train_seconds 1.0)
    # SGD's only run was made on another CPU: its seconds, said so, and not mixed into this CPU's estimate
    assert rows[("search", "sgd")]["median_seconds"] == 9.0 and not rows[("search", "sgd")]["timed_here"]
    left = (2 * space["trials"] - 4) * 1.0 / 3600
    text = tuning.status_text("vit", list(rows.values()))
    assert f"about {left:.1f} h left at the median 1 s a run on this CPU" in text
    other = tuning.status("vit", tmp_path, ["adamw", "sgd"], device="CPU C")
    assert "at the median 5 s a run on other CPUs" in tuning.status_text("vit", other)  # median of 1 and 9
    # a run on this CPU with a load record: only the runs that had the machine to themselves count
    for k, (load, seconds) in enumerate([(2.1, 4.0), (4.0, 30.0)], start=4):
        _fake_run(logs / "search" / "adamw", f"s{k}", optimizer="adamw", stage="search", k=k, seed=0, score=0.5,
                  loss=1.0, steps=50, seconds=seconds, load=load)  # fmt: skip
    rows = {(r["stage"], r["optimizer"]): r for r in tuning.status("vit", tmp_path, ["adamw", "sgd"], device="CPU A")}
    assert rows[("search", "adamw")]["median_seconds"] == 4.0 and rows[("search", "adamw")]["done"] == 5
    for k in (4, 5):
        (logs / "search" / "adamw" / f"s{k}" / "metrics.json").unlink()
    (logs / "search" / "sgd" / "s0" / "metrics.json").unlink()
    rows = {(r["stage"], r["optimizer"]): r for r in tuning.status("vit", tmp_path, ["adamw", "sgd"], device="CPU A")}
    assert rows[("search", "sgd")]["done"] == 0 and math.isnan(rows[("search", "sgd")]["median_seconds"])
    assert rows[("confirm", "adamw")]["done"] == 1 and rows[("confirm", "adamw")]["planned"] == 2 * len(space["seeds"])
    assert [o for s, o in rows if s == "speedup"] == [space["reference"]]
    text = tuning.status_text("vit", list(rows.values()))
    want = f"vit search: 3 of {2 * space['trials']} jobs have a result (1 failed or diverged), 1 stopped or running"
    assert want in text and f"adamw 3/{space['trials']}, sgd 0/{space['trials']}" in text


def test_a_run_killed_while_testing_has_no_result_until_its_test_ends(tmp_path):
    """The end of fit writes "completed"; a run SIGKILLed in its test then holds no test result. Its
    status reads "untested": the stage counts it unfinished, publishing leaves it out, a rerun sweep
    resumes it (it only tests), and a resume has something left to do."""
    from lmvit.resume import UNTESTED, nothing_left, publish_records, run_status, saved_status, sweep_job_plan

    logs = tmp_path / "tuning" / "vit"
    sweep_dir = logs / "confirm" / "adamw"
    for seed in (1, 2):
        _fake_run(sweep_dir, f"t{seed}", optimizer="adamw", stage="confirm", k=1, seed=seed, score=0.5, loss=1.0,
                  steps=50)  # fmt: skip
        cfg = yaml.safe_load((sweep_dir / f"t{seed}" / "config.yaml").read_text())
        (sweep_dir / f"t{seed}" / "config.yaml").write_text(yaml.safe_dump({**cfg, "test": True}))
    tested = sweep_dir / "t1" / "metrics.json"
    tested.write_text(json.dumps({**json.loads(tested.read_text()), "test": {"test/acc": 0.5}}))
    killed = sweep_dir / "t2"
    (killed / "checkpoints").mkdir()
    (killed / "checkpoints" / "last.ckpt").write_bytes(b"")

    assert [saved_status(sweep_dir / "t1"), saved_status(killed)] == ["completed", UNTESTED]
    assert run_status({"status": "completed"}, {"test": False}) == "completed"  # no test asked for
    assert run_status({"status": "failed"}, {"test": True}) == "failed"
    assert [sweep_job_plan(sweep_dir / "t1", False), sweep_job_plan(killed, False)] == ["skip", "resume"]
    (killed / "checkpoints" / "last.ckpt").unlink()
    assert sweep_job_plan(killed, False) == "new"  # nothing to test from: it trains again
    cfg = OmegaConf.create({"test": True, "trainer": {"max_epochs": 1, "max_steps": -1}})
    previous = json.loads((killed / "metrics.json").read_text()) | {"epochs": 1}
    assert not nothing_left(cfg, previous) and nothing_left(cfg, previous | {"test": {"test/acc": 0.5}})

    rows = {(r["stage"], r["optimizer"]): r for r in tuning.status("vit", tmp_path, ["adamw"], device="CPU A")}
    assert (rows[("confirm", "adamw")]["done"], rows[("confirm", "adamw")]["unfinished"]) == (1, 1)
    published = publish_records(sweep_dir, tmp_path / "published")
    assert [p.name for p in published] == ["t1"]


def test_checkpoints_go_once_a_job_has_its_result_and_a_sweep_needs_the_disk_it_will_fill(tmp_path, monkeypatch):
    """After a sweep the checkpoints of its jobs with a result go (the report and a rerun read only the
    records); a crashed or stopped job keeps its own (a rerun continues from it) and has no result:
    the stage counts it unfinished and nothing publishes it. Before a sweep, the disk must hold its
    jobs' checkpoints (the largest folder seen) and the margin: else one line, nothing launched."""
    from lmvit.resume import publish_records

    sweep_dir = tmp_path / "tuning" / "vit" / "search" / "adamw"
    for k, status in ((1, "completed"), (2, "diverged"), (3, "crashed")):
        _fake_run(sweep_dir, f"t{k}", optimizer="adamw", stage="search", k=k, seed=0, score=0.5, loss=1.0,
                  steps=50, status=status)  # fmt: skip
        (sweep_dir / f"t{k}" / "checkpoints").mkdir()
        (sweep_dir / f"t{k}" / "checkpoints" / "last.ckpt").write_bytes(b"x" * 1000 * k)
    (sweep,) = tuning.plan("vit", "search", tmp_path, [], ["adamw"], trials=6)
    assert sweep.sweep_dir == sweep_dir
    assert tuning.clear_checkpoints(sweep) == 2000  # the largest folder deleted: the diverged job's
    assert [(sweep_dir / f"t{s}" / "checkpoints").is_dir() for s in (1, 2, 3)] == [False, False, True]
    rows = {(r["stage"], r["optimizer"]): r for r in tuning.status("vit", tmp_path, ["adamw"], device="CPU A")}
    assert (rows[("search", "adamw")]["done"], rows[("search", "adamw")]["unfinished"]) == (2, 1)
    assert sorted(p.name for p in publish_records(sweep_dir, tmp_path / "published")) == ["t1", "t2"]

    class Usage:
        free = tuning.disk_needed(4, 3000) - 1

    monkeypatch.setattr(tuning.shutil, "disk_usage", lambda path: Usage)
    launched = []
    monkeypatch.setattr(tuning, "_run_sweep", lambda argv: launched.append(argv) or (0, None))
    with pytest.raises(UserError) as refused:  # 4 jobs left (of 6), 3,000 bytes measured on t3
        tuning.run_stage([sweep])
    line = str(refused.value)
    assert "\n" not in line and line.startswith("search adamw: ") and "4 jobs need about 1.0 GB" in line
    assert "--log-dir" in line and not launched and (sweep_dir / "t3" / "checkpoints").is_dir()
    Usage.free += 1
    assert "search adamw: 4 of 6 jobs to run" in tuning.run_stage([sweep]) and len(launched) == 1
