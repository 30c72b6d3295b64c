"""Scaling out: DDP on 2 CPU processes (gloo), parallel sweeps (joblib, submitit_local), the Optuna
search, and the SLURM launcher config. End-to-end runs use a tiny ViT on a few real CIFAR-10 batches."""

from __future__ import annotations

import math
import re
import signal
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from tests.helpers import ROOT, find_runs, load_metrics, run_train

TINY = (
    "debug=fast",
    "model.num_layers=1",
    "model.embed_dim=32",
    "model.hidden_dim=64",
    "model.num_heads=2",
    "trainer.accelerator=cpu",
)
SWEEP_JOB = ("trainer.max_epochs=1", "test=false")  # sweep tests check the launching, not training
EVENT_NAME = re.compile(r"events\.out\.tfevents\.\d+\..+\.(\d+)\.\d+$")


def event_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("events.out.tfevents.*"))


def writer_pid(event_file: Path) -> int:
    """TensorBoard names each event file ...<time>.<host>.<pid>.<n>: the process that wrote it."""
    return int(EVENT_NAME.search(event_file.name).group(1))


def overrides_of(run_dir: Path) -> dict[str, str]:
    return dict(o.split("=", 1) for o in load_metrics(run_dir)["overrides"])


# -- DDP --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_on_two_processes_logs_once_and_matches_a_single_process_evaluation(tmp_path, data_dir):
    # val_size=64 = 2 processes x 2 batches x 16 images: DistributedSampler splits the 64 images into
    # two disjoint halves with no padding, and debug's limit_val_batches=2 covers each half entirely.
    # fp32 (the CPU default is bf16 where the processor has it): compared below with an fp32 evaluation
    proc = run_train(
        *TINY, "trainer=ddp", "trainer.devices=2", "trainer.precision=32-true", "data.val_size=64",
        log_dir=tmp_path, data_dir=data_dir,
    )  # fmt: skip
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # rank 1 joined the process group

    runs = find_runs(tmp_path)
    assert len(runs) == 1, runs  # one metrics.json for the whole run
    run = runs[0]
    assert [p.name for p in (tmp_path / "debug" / "vit" / "runs").iterdir()] == [run.name]  # one run dir
    # rank 1 (started by Lightning re-running train.py) worked in rank 0's run dir
    assert (run / "train_ddp_process_1.log").is_file()
    summary = load_metrics(run)
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert summary["test"]["test/acc"] >= 0.0  # the test stage ran on both ranks without hanging

    # one set of TensorBoard logs, all written by one process (rank 0)
    events = event_files(tmp_path)
    assert events and {e.parent for e in events} == {run / "tensorboard"}
    assert len({writer_pid(e) for e in events}) == 1

    # independent single-process evaluation of the final weights on the same 64 validation images
    from datamodules.cifar10 import CIFAR10DataModule
    from lightning_modules.vit_classifier import ViTClassifier

    net = ViTClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").net.eval()
    dm = CIFAR10DataModule(data_dir=str(data_dir), val_size=64, seed=42, num_workers=0)
    dm.setup("fit")
    images = torch.stack([dm.data_val[i][0] for i in range(len(dm.data_val))])
    labels = torch.stack([dm.data_val[i][1] for i in range(len(dm.data_val))])
    with torch.no_grad():
        logits = net(images)
    acc = (logits.argmax(-1) == labels).float().mean().item()
    loss = torch.nn.functional.cross_entropy(logits, labels).item()

    assert summary["final"]["val/acc"] == pytest.approx(acc, abs=1e-7)  # counts over 64: exact
    assert summary["final"]["val/loss"] == pytest.approx(loss, rel=1e-5)


@pytest.mark.slow
def test_ddp_subprocess_launch_inside_a_multirun_is_refused():
    """Lightning would re-run the sweep's command line for rank 1: a clear error instead."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from lmvit.distributed import check_ddp_launch
    from lmvit.errors import ConfigError

    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        try:
            for mode, refused in (("RUN", False), ("MULTIRUN", True)):
                cfg = compose("train", overrides=[f"hydra.mode={mode}"], return_hydra_config=True)
                HydraConfig.instance().set_config(cfg)
                if refused:
                    with pytest.raises(ConfigError, match=r"trainer\.devices=2 .* multirun"):
                        check_ddp_launch(trainer)
                else:
                    check_ddp_launch(trainer)
        finally:
            HydraConfig.instance().cfg = None
    single = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    check_ddp_launch(single)  # one process: nothing to launch


def test_uneven_evaluation_shards_warn_with_the_fix():
    from lmvit.distributed import warn_uneven_shards

    with pytest.warns(UserWarning, match=r"5001 items, not divisible by the 2 .* repeats 1 .*data\.val_size"):
        warn_uneven_shards("validation", 5001, 2, "Set data.val_size to a multiple of 2.")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_uneven_shards("validation", 5000, 4, "")
        warn_uneven_shards("validation", 5001, 1, "")


# -- sweeps -----------------------------------------------------------------------------------------
def _sweep_runs(log_dir: Path, jobs: int) -> list[Path]:
    sweeps = list((log_dir / "debug" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps  # all jobs of the sweep share one sweep dir
    runs = find_runs(sweeps[0])
    assert len(runs) == jobs, runs
    for run in runs:
        assert load_metrics(run)["status"] == "completed", run
    return runs


@pytest.mark.slow
def test_optuna_search_with_trials_in_parallel_on_joblib(tmp_path, data_dir):
    """hparams_search=optuna: 2 trials, asked together and run by the joblib launcher in parallel."""
    run_train(
        *TINY,
        "hparams_search=optuna",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_trials=2",
        *SWEEP_JOB,
        log_dir=tmp_path,
        data_dir=data_dir,
    )
    runs = _sweep_runs(tmp_path, jobs=2)

    # joblib ran the two jobs in two worker processes (the basic launcher would use one)
    pids = {writer_pid(e) for run in runs for e in event_files(run)}
    assert len(pids) == 2, pids

    trials = []
    for run in runs:
        params = overrides_of(run)
        lr, wd = float(params["optimizer.lr"]), float(params["optimizer.weight_decay"])
        assert 1e-5 <= lr <= 1e-2 and 0.0 <= wd <= 0.1
        assert yaml.safe_load((run / "config.yaml").read_text())["optimizer"]["lr"] == pytest.approx(lr)
        trials.append((load_metrics(run)["best"]["val/acc"], lr, wd))

    results = yaml.safe_load((runs[0].parent / "optimization_results.yaml").read_text())
    best_acc, best_lr, best_wd = max(trials)
    assert results["best_value"] == pytest.approx(best_acc)  # maximised the value train.py returned
    if sorted(t[0] for t in trials)[0] != best_acc:  # a unique best trial: its parameters are reported
        assert results["best_params"]["optimizer.lr"] == pytest.approx(best_lr)
        assert results["best_params"]["optimizer.weight_decay"] == pytest.approx(best_wd)


@pytest.mark.slow
def test_submitit_local_sweep_runs_two_jobs(tmp_path, data_dir):
    run_train(
        "-m",
        *TINY,
        "hydra/launcher=submitit_local",
        "optimizer.lr=1e-3,3e-4",
        *SWEEP_JOB,
        log_dir=tmp_path,
        data_dir=data_dir,
    )
    runs = _sweep_runs(tmp_path, jobs=2)
    assert sorted(float(overrides_of(r)["optimizer.lr"]) for r in runs) == [3e-4, 1e-3]
    # each job ran as its own submitit job (its pickled result and logs under .submitit/)
    submitit_dir = runs[0].parent / ".submitit"
    assert len(list(submitit_dir.rglob("*_result.pkl"))) == 2
    pids = {writer_pid(e) for run in runs for e in event_files(run)}
    assert len(pids) == 2, pids


# -- SLURM ------------------------------------------------------------------------------------------
def test_slurm_launcher_config_matches_lightning_ddp_and_requeue(tmp_path, monkeypatch):
    """hydra/launcher=slurm renders an sbatch script with one task per GPU on each node and the
    signal Lightning's SLURMEnvironment requeues on (no cluster needed: nothing is submitted)."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from lightning_fabric.plugins.environments import SLURMEnvironment
    from omegaconf import OmegaConf

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            return_hydra_config=True,
            overrides=[
                "hydra/launcher=slurm",
                "hydra.launcher.partition=gpu",
                "trainer=ddp",
                "trainer.devices=4",
                "trainer.num_nodes=2",
            ],
        )
    env = SLURMEnvironment()  # what Lightning auto-detects on SLURM
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"

    # the executor parameters exactly as the launcher passes them to submitit (its launch())
    params = {k: v for k, v in launcher.params.items() if k != "submitit_folder"}
    (tmp_path / "bin").mkdir()  # submitit insists on finding srun; a stub is enough to render
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{Path('/usr/bin')}:{Path('/bin')}")
    executor = submitit.AutoExecutor(
        folder=tmp_path, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sbatch = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")

    flags = set(re.findall(r"^#SBATCH --(\S+)$", sbatch, flags=re.M))
    assert {"nodes=2", "ntasks-per-node=4", "gpus-per-node=4", "partition=gpu", "requeue"} <= flags
    # the run checkpoints and requeues on this signal (StopCheckpoint, through SLURMEnvironment)
    assert env.auto_requeue and env.requeue_signal == signal.SIGUSR1
    assert "signal=USR1@120" in flags
    assert "srun" in sbatch  # SLURM starts the processes: Lightning does not re-run the script


def test_optuna_database_storage_works_with_the_pinned_sqlalchemy(tmp_path):
    """hydra.sweeper.storage=sqlite:///... (resumable, shareable studies) with optuna 2.10 needs
    SQLAlchemy < 2 (pyproject's scale extra); with 2.x optuna fails when it creates the study."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=2)
    reloaded = optuna.load_study(study_name="s", storage=storage)
    assert len(reloaded.trials) == 2 and reloaded.best_value == study.best_value


def test_trials_to_run_counts_finished_and_stopped_trials():
    from hydra_plugins.lmvit_optuna.resumable import trials_to_run

    assert trials_to_run([], 20) == (20, 0)
    assert trials_to_run(["COMPLETE"] * 11 + ["FAIL"], 20) == (8, 0)
    assert trials_to_run(["COMPLETE"] * 12 + ["RUNNING"] * 2, 20) == (6, 2)  # stopped ones count, as failed
    assert trials_to_run(["COMPLETE"] * 25, 20) == (0, 0)


@pytest.mark.slow
def test_an_optuna_search_with_storage_continues_to_its_total(tmp_path, data_dir):
    """A stored study rerun with a larger n_trials runs only the missing trials, in new job
    directories; rerun once more, it has nothing left to run."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    common = [*TINY, "hparams_search=optuna", f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_jobs=1"]
    common += [*SWEEP_JOB, f"hydra.sweep.dir={tmp_path / 'search'}"]
    run_train(*common, "hydra.sweeper.n_trials=2", log_dir=tmp_path, data_dir=data_dir)
    run_train(*common, "hydra.sweeper.n_trials=3", log_dir=tmp_path, data_dir=data_dir)
    proc = run_train(*common, "hydra.sweeper.n_trials=3", log_dir=tmp_path, data_dir=data_dir)
    assert "0 more to reach n_trials=3" in proc.stdout + proc.stderr

    study = optuna.load_study(study_name="vit_lr_wd", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    jobs = sorted(p.name for p in (tmp_path / "search").iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1", "2"]  # the third trial in a new directory
    lrs = {float(overrides_of(tmp_path / "search" / j)["optimizer.lr"]) for j in jobs}
    assert len(lrs) == 3  # three trials, three points: none ran twice


def test_training_order_shards_partition_the_epoch_across_processes():
    """Under DDP each process draws a disjoint, equal share of the one seeded epoch order (with its
    augmentation seeds); Lightning keeps the sampler since it is a DistributedSampler."""
    from torch.utils.data import DistributedSampler

    from datamodules.sampling import EpochShuffleSampler

    whole = list(EpochShuffleSampler(10, seed=3))
    shards = [list(EpochShuffleSampler(10, seed=3, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]  # 10 // 3: the last position is dropped
    assert sorted(p for s in shards for p in s) == sorted(whole[:9])
    assert shards[1] == whole[1:9:3]
    assert isinstance(EpochShuffleSampler(10, seed=3), DistributedSampler)


@pytest.mark.slow
def test_table_jobs_side_by_side_keep_their_own_dirs_logs_and_caches(tmp_path, data_dir):
    """Two jobs of a table at once (hydra/launcher=joblib n_jobs=2), both starting with an empty
    WikiText-2 token cache and an empty md5/XDG cache: each run directory is complete and its own
    (config, Hydra files, train.log, TensorBoard events of its own process, checkpoints, metrics),
    and the cache both wrote at the same time holds whole files equal to a fresh tokenization."""
    from datamodules.tokenizers import WordTokenizer
    from datamodules.wikitext2 import FOLDER

    cache = tmp_path / "token-cache"
    run_train(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "debug=fast",
        "model=lstm",
        "data=wikitext2_offline",
        "model.embedding_size=16",
        "model.hidden_size=16",
        "data.seq_len=16",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "optimizer=adam,adamw",
        f"data.cache_dir={cache}",
        log_dir=tmp_path / "logs",
        data_dir=data_dir,
        env={"XDG_CACHE_HOME": str(tmp_path / "xdg")},
    )
    (sweep,) = (tmp_path / "logs" / "debug" / "multiruns").iterdir()
    runs = sorted(find_runs(sweep), key=lambda r: overrides_of(r)["optimizer"])
    assert [overrides_of(r)["optimizer"] for r in runs] == ["adam", "adamw"] and runs[0] != runs[1]
    pids = set()
    for run, optimizer in zip(runs, ("Adam", "AdamW")):
        metrics = load_metrics(run)
        assert metrics["status"] == "completed" and metrics["epochs"] == 1, run
        assert metrics["test"] and all(math.isfinite(v) for v in metrics["final"].values())
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["optimizer"]["_target_"].endswith(optimizer) and config["paths"]["output_dir"] == str(run)
        assert (run / ".hydra" / "overrides.yaml").is_file()
        assert "Wrote" in (run / "train.log").read_text()  # its own console log, to the end
        ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts), ckpts
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        # its own optimizer's state (the study's Adam has no weight decay, AdamW 5e-4)
        assert ckpt["optimizer_states"][0]["param_groups"][0]["weight_decay"] == (0.0 if optimizer == "Adam" else 5e-4)
        events = event_files(run / "tensorboard")
        assert events and {writer_pid(e) for e in events}.isdisjoint(pids)  # written by this job's process only
        pids |= {writer_pid(e) for e in events}
    assert len(pids) == 2  # the two jobs ran in two processes
    # the token cache both jobs filled at once: whole files, no temporary leftovers, right contents
    leftovers = [p.name for p in cache.iterdir() if p.name.startswith(".") and not p.name.startswith(".probe")]
    assert leftovers == []
    valid = data_dir / FOLDER / "wiki.valid.tokens"
    tokenizer = WordTokenizer.from_file(valid)
    (ids_file,) = cache.glob("wiki.valid.tokens.*.pt")
    assert torch.equal(torch.load(ids_file).long(), tokenizer.file_ids(valid).long())


# -- loader workers inside joblib jobs ----------------------------------------------------------------
@pytest.mark.slow
def test_a_joblib_job_starts_its_loader_workers(tmp_path, data_dir):
    """Inside a loky worker the default multiprocessing context is loky's, which cannot start
    torch's loader workers; the loader names its own context."""
    run_train(
        "-m", "debug=fast", "seed=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1",
        "data.num_workers=1", "test=false", log_dir=tmp_path, data_dir=data_dir,
    )  # fmt: skip
    (run,) = find_runs(tmp_path)
    assert load_metrics(run)["status"] == "completed"


@pytest.mark.parametrize("n_jobs,cores,asked,expected", [(2, 2, 4, 0), (1, 2, 4, 1), (2, 16, 4, 4), (-1, 8, 2, 0)])
def test_jobs_side_by_side_never_oversubscribe_the_cores(monkeypatch, n_jobs, cores, asked, expected):
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    import train

    monkeypatch.setattr(train, "usable_cpus", lambda: cores)
    cfg = OmegaConf.create({"data": {"num_workers": asked}})
    hydra_cfg = OmegaConf.create({"launcher": {"n_jobs": n_jobs}})
    hydra_cfg.mode = RunMode.MULTIRUN
    train.fit_workers_to_jobs(cfg, hydra_cfg)
    assert cfg.data.num_workers == expected
    assert (expected + 1) * min(cores if n_jobs < 0 else n_jobs, cores) <= cores or expected == 0
