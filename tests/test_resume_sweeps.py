"""A stopped or killed run, and an interrupted sweep, keep every number and second they measured.

- SIGTERM to the process group (a scheduler, ``timeout``, a container stop; loader workers
  included): a checkpoint where the run stands, ``interrupted``, one line with the resume command,
  exit 143; the resumed run equals an uninterrupted one, its times summed over its pieces.
- Stopped in the middle of an epoch's validation: the resumed run validates that epoch again, whole.
- Killed in an epoch's validation when its last checkpoint was taken at the epoch's last batch (every
  N steps): the resumed run validates and ends that epoch (Lightning alone would skip both); killed
  just after an epoch's end: the next epoch's training numbers are its own.
- A finished run resumed with nothing to do changes nothing.
- A sweep SIGKILLed in its second job, rerun with the same command and ``hydra.sweep.dir``: the
  completed job is untouched, the killed one resumes, every number equals an uninterrupted sweep's.
- SIGTERM while a run tests, or after training's last check: the run stops before (or in) its test,
  resumable; SIGKILL while it tests (metrics.json says completed, no test): the rerun sweep resumes
  it too. Either resume only tests, with the numbers of an uninterrupted run.
- A rerun with other overrides is refused with one line.
- A job stopped by a full disk (an ``OSError``, ENOSPC) is ``crashed``, not ``failed``: the rerun
  continues it from its last checkpoint, with the numbers of an uninterrupted run.
- The same on the joblib launcher, two jobs side by side, one SIGKILLed: the rerun finishes both.
- On SLURM, the requeue signal (USR1) at a step: a checkpoint there, ``scontrol requeue`` of the
  job's array task, exit 138; the requeued job (the same command in the same environment) resumes
  and ends with the numbers of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import ROOT, find_runs, load_metrics, run_train
from tests.test_reliability import SMALL, comparable

pytestmark = pytest.mark.slow

KILL = ["+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.seed=${seed}"]
STEP = 17  # batch 7 of epoch 2 (10 steps an epoch); the last checkpoint on disk: step 16
EVERY = ["callbacks.periodic_checkpoint.every_n_train_steps=4"]


def assert_times_summed(metrics: dict, pieces: int) -> None:
    epochs = [row["time/epoch_s"] for row in metrics["history"]]
    assert len(epochs) == metrics["epochs"] and all(t > 0 for t in epochs)
    assert metrics["train_seconds"] == pytest.approx(sum(epochs), rel=1e-6)
    assert metrics["pieces"] == pieces


def test_sigterm_saves_where_it_stands_and_the_resumed_run_keeps_every_second(tmp_path, data_dir):
    run_train(*SMALL, *EVERY, "data.num_workers=0", log_dir=tmp_path / "a", data_dir=data_dir)
    (reference,) = find_runs(tmp_path / "a")

    args = [
        sys.executable,
        str(ROOT / "train.py"),
        *SMALL,
        *EVERY,
        "data.num_workers=2",
        *KILL,
        "+callbacks.kill.sig=SIGTERM",
        f"paths.log_dir={tmp_path / 'b'}",
        f"data.data_dir={data_dir}",
    ]
    env = {**os.environ, "LMVIT_KILL_AT": f"any:{STEP}", "PYTHONUNBUFFERED": "1"}
    # its own process group, as under a scheduler: SIGTERM reaches train.py and its loader workers
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env, start_new_session=True)
    assert proc.returncode == 143, proc.stderr[-3000:]
    (run,) = find_runs(tmp_path / "b")
    stopped = load_metrics(run)
    assert stopped["status"] == "interrupted" and stopped["epochs"] == 1
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "Stopped by SIGTERM" in line]
    assert len(lines) == 1 and f"python train.py resume={run}" in lines[0]
    import torch

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEP  # where it stood, not the step-16 periodic checkpoint

    run_train(f"resume={run}", log_dir=tmp_path / "b", data_dir=None)
    resumed = load_metrics(run)
    assert resumed["status"] == "completed" and resumed["error"] is None
    assert comparable(resumed) == comparable(load_metrics(reference))
    assert_times_summed(resumed, pieces=2)

    # finished: resuming again does nothing and says so in one line
    before = (run / "metrics.json").read_bytes()
    proc = run_train(f"resume={run}", log_dir=tmp_path / "b", data_dir=None)
    assert "Nothing to do" in proc.stdout + proc.stderr
    assert (run / "metrics.json").read_bytes() == before
    # with more epochs asked for, it continues
    run_train(f"resume={run}", "trainer.max_epochs=4", log_dir=tmp_path / "b", data_dir=None)
    longer = load_metrics(run)
    assert longer["epochs"] == 4 and longer["history"][:3] == resumed["history"]
    assert_times_summed(longer, pieces=3)


def test_a_run_stopped_during_validation_validates_that_epoch_again_when_resumed(tmp_path, data_dir):
    """Lightning would resume past the stopped validation: that epoch's val numbers would be lost."""
    common = [*SMALL, "data.num_workers=0"]
    run_train(*common, log_dir=tmp_path / "a", data_dir=data_dir)
    (reference,) = find_runs(tmp_path / "a")
    # SIGTERM after validation batch 1 (of 3) of epoch 2's validation (10 steps an epoch)
    stop = [*KILL, "+callbacks.kill.sig=SIGTERM", "+callbacks.kill.validation_batch=1"]
    args = [sys.executable, str(ROOT / "train.py"), *common, *stop]
    args += [f"paths.log_dir={tmp_path / 'b'}", f"data.data_dir={data_dir}"]
    env = {**os.environ, "LMVIT_KILL_AT": "any:20"}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env, start_new_session=True)
    assert proc.returncode == 143, proc.stderr[-3000:]
    (run,) = find_runs(tmp_path / "b")
    assert load_metrics(run)["epochs"] == 1  # epoch 2 had not ended

    run_train(f"resume={run}", log_dir=tmp_path / "b", data_dir=None)
    resumed = load_metrics(run)
    assert resumed["status"] == "completed"
    assert all("val/acc" in row for row in resumed["history"]), resumed["history"]
    assert comparable(resumed) == comparable(load_metrics(reference))
    assert_times_summed(resumed, pieces=2)


@pytest.fixture(scope="module")
def every_4_steps(tmp_path_factory, data_dir):
    """An uninterrupted run with a checkpoint every 4 steps (10 steps an epoch), and its settings."""
    common = [*SMALL, *EVERY, "data.num_workers=0"]
    log_dir = tmp_path_factory.mktemp("reference")
    run_train(*common, log_dir=log_dir, data_dir=data_dir)
    (reference,) = find_runs(log_dir)
    return common, load_metrics(reference)


@pytest.mark.parametrize(
    "kill_at, validation_batch, checkpoint_step",
    [
        # killed in epoch 2's first step: last.ckpt is epoch 1's, taken at its validation's end
        ("any:11", None, 10),
        # killed in epoch 2's validation: last.ckpt is step 20's, taken at the epoch's last batch
        ("any:20", 1, 20),
    ],
    ids=["epoch-end-checkpoint", "last-batch-checkpoint"],
)
def test_a_run_killed_at_an_epochs_end_resumes_with_that_epochs_numbers(
    tmp_path, data_dir, every_4_steps, kill_at, validation_batch, checkpoint_step
):
    """Lightning alone resumes a checkpoint of an epoch's last batch past that epoch's validation and
    end, and a checkpoint of an epoch's end with that epoch's training metrics still accumulating."""
    common, reference = every_4_steps
    args = [sys.executable, str(ROOT / "train.py"), *common, *KILL]
    if validation_batch is not None:
        args.append(f"+callbacks.kill.validation_batch={validation_batch}")
    args += [f"paths.log_dir={tmp_path}", f"data.data_dir={data_dir}"]
    env = {**os.environ, "LMVIT_KILL_AT": kill_at}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == -9, proc.stderr[-3000:]
    (run,) = find_runs(tmp_path)
    import torch

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == checkpoint_step

    run_train(f"resume={run}", log_dir=tmp_path, data_dir=None)
    resumed = load_metrics(run)
    assert [row["step"] for row in resumed["history"]] == [10, 20, 30]
    assert comparable(resumed) == comparable(reference)
    assert_times_summed(resumed, pieces=2)


def sweep(
    tmp_path,
    sweep_dir,
    *extra,
    kill: str | None = None,
    data_dir=None,
    seeds="1,2",
    env: dict | None = None,
    new_session: bool = False,
) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        f"seed={seeds}",
        *SMALL,
        *EVERY,
        "data.num_workers=0",
        *KILL,
        *extra,
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.log_dir={tmp_path}",
        f"data.data_dir={data_dir}",
    ]
    env = {**{k: v for k, v in os.environ.items() if k != "LMVIT_KILL_AT"}, **(env or {})}
    if kill:
        env["LMVIT_KILL_AT"] = kill
    return subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env, start_new_session=new_session
    )


def jobs(sweep_dir) -> dict[int, dict]:
    return {load_metrics(r)["seed"]: load_metrics(r) for r in find_runs(sweep_dir)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir) -> dict[int, dict]:
    """The uninterrupted sweep (seeds 1 and 2) the stopped ones are compared with, trained once: the
    kill callback's settings change no number (it fires only where LMVIT_KILL_AT says)."""
    root = tmp_path_factory.mktemp("reference")
    assert sweep(root, root / "a", data_dir=data_dir).returncode == 0
    return jobs(root / "a")


def test_a_killed_sweep_rerun_finishes_with_the_numbers_of_an_uninterrupted_one(tmp_path, data_dir, reference):

    killed = sweep(tmp_path, tmp_path / "b", kill=f"2:{STEP}", data_dir=data_dir)
    assert killed.returncode == -9  # SIGKILL in job 2 takes the whole sweep down
    first = next(r for r in find_runs(tmp_path / "b") if load_metrics(r)["seed"] == 1)
    assert load_metrics(first)["status"] == "completed"
    untouched = ((first / "metrics.json").read_bytes(), (first / "metrics.json").stat().st_mtime_ns)

    rerun = sweep(tmp_path, tmp_path / "b", data_dir=data_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    out = rerun.stdout + rerun.stderr
    assert "Skipped" in out and "Resuming" in out
    assert ((first / "metrics.json").read_bytes(), (first / "metrics.json").stat().st_mtime_ns) == untouched
    finished = jobs(tmp_path / "b")
    assert sorted(finished) == [1, 2] and all(m["status"] == "completed" for m in finished.values())
    for seed in (1, 2):
        assert comparable(finished[seed]) == comparable(reference[seed])
    assert_times_summed(finished[2], pieces=2)
    summary = (tmp_path / "b" / "sweep_summary.json").read_text()
    assert '"completed": 2' in summary and '"failed": []' in summary

    # other settings in the same sweep folder: refused with one line, nothing changed
    refused = sweep(tmp_path, tmp_path / "b", "model.dropout=0.2", data_dir=data_dir)
    assert refused.returncode == 2
    error = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "holds a sweep of other settings" in error[0] and "model.dropout=0.2" in error[0]
    assert jobs(tmp_path / "b") == finished


def test_a_job_stopped_by_a_full_disk_is_crashed_and_the_rerun_continues_it(tmp_path, data_dir, reference):
    """An ``OSError`` of a full disk at step 17 of job 1: a failure of the machine, not of the job's
    settings. The job says ``crashed`` with its error, the sweep goes on to job 2 and exits 1 naming
    it; the rerun (the disk freed) continues job 1 from its last checkpoint, where a ``failed`` job
    would be skipped, and it ends with the numbers of an uninterrupted run, its seconds summed."""
    full = ["+callbacks.kill.sig=ENOSPC"]
    stopped = sweep(tmp_path, tmp_path / "b", *full, kill=f"1:{STEP}", data_dir=data_dir)
    assert stopped.returncode == 1, stopped.stderr[-3000:]
    first = jobs(tmp_path / "b")
    assert first[1]["status"] == "crashed" and first[1]["error"]["type"] == "OSError"
    assert "No space left on device" in first[1]["error"]["message"] and first[2]["status"] == "completed"
    assert "crashed: [Errno 28] No space left on device" in stopped.stdout + stopped.stderr

    rerun = sweep(tmp_path, tmp_path / "b", *full, data_dir=data_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resuming" in rerun.stdout + rerun.stderr
    finished = jobs(tmp_path / "b")
    assert all(m["status"] == "completed" for m in finished.values()) and finished[1]["error"] is None
    for seed in (1, 2):
        assert comparable(finished[seed]) == comparable(reference[seed])
    assert_times_summed(finished[1], pieces=2)


# --- a SIGTERM where Lightning does not look for one ----------------------------------------------
LAST = 30  # SMALL's last step: 3 epochs of 10


def test_a_sigterm_while_testing_stops_the_run_and_the_resumed_run_tests_it(tmp_path, data_dir):
    """Lightning raises its stop from trainer.test as SystemExit(0): the run must say interrupted,
    exit 143 like a stop in training, and its resume must test it without training again."""
    common = [*SMALL, "data.num_workers=0"]
    run_train(*common, log_dir=tmp_path / "a", data_dir=data_dir)
    (reference,) = find_runs(tmp_path / "a")
    args = [sys.executable, str(ROOT / "train.py"), *common, *KILL, "+callbacks.kill.sig=SIGTERM",
            "+callbacks.kill.test_batch=0", f"paths.log_dir={tmp_path / 'b'}", f"data.data_dir={data_dir}"]  # fmt: skip
    env = {**os.environ, "LMVIT_KILL_AT": f"any:{LAST}"}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env, start_new_session=True)
    assert proc.returncode == 143, proc.stderr[-3000:]
    (run,) = find_runs(tmp_path / "b")
    stopped = load_metrics(run)
    assert stopped["status"] == "interrupted" and stopped["test"] == {} and stopped["epochs"] == 3

    resumed = run_train(f"resume={run}", log_dir=tmp_path / "b", data_dir=None)
    assert "Training:" not in resumed.stdout + resumed.stderr  # nothing left to train: it only tests
    done = load_metrics(run)
    assert done["status"] == "completed" and done["test"] and done["error"] is None
    assert comparable(done) == comparable(load_metrics(reference))
    assert_times_summed(done, pieces=2)


def test_a_sigterm_after_trainings_last_check_stops_the_sweep_before_the_test_and_the_next_job(
    tmp_path, data_dir, reference
):
    """A SIGTERM at the end of fit (after Lightning's last look for one) was dropped: the run tested
    and the sweep went on to its next job. Now the run stops before its test (resumable, interrupted),
    the sweep starts nothing more and exits 143, and the rerun finishes both jobs."""
    stop = ["+callbacks.kill.sig=SIGTERM", "+callbacks.kill.fit_end=true"]

    killed = sweep(tmp_path, tmp_path / "b", *stop, kill=f"1:{LAST}", data_dir=data_dir, new_session=True)
    assert killed.returncode == 143, killed.stderr[-3000:]
    assert "Stopped by SIGTERM after training, before the test" in killed.stdout + killed.stderr
    stopped = jobs(tmp_path / "b")
    assert sorted(stopped) == [1]  # job 2 never started
    assert stopped[1]["status"] == "interrupted" and stopped[1]["test"] == {} and stopped[1]["epochs"] == 3

    rerun = sweep(tmp_path, tmp_path / "b", *stop, data_dir=data_dir, new_session=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    finished = jobs(tmp_path / "b")
    assert sorted(finished) == [1, 2] and all(m["status"] == "completed" and m["test"] for m in finished.values())
    assert comparable(finished[1]) == comparable(reference[1])
    assert_times_summed(finished[1], pieces=2)


def test_a_sweep_sigkilled_while_testing_rerun_tests_that_run_without_training_it_again(tmp_path, data_dir, reference):
    """A SIGKILL (a lost machine) during a run's test leaves metrics.json as the end of fit wrote it:
    "completed", no test result. The rerun sweep must not skip it as done, nor publish it: it resumes
    the run, which only tests, and its numbers equal an uninterrupted run's."""
    from lmvit.resume import UNTESTED, publish_records, saved_status

    testing = ["+callbacks.kill.test_batch=1"]
    killed = sweep(tmp_path, tmp_path / "b", *testing, kill=f"1:{LAST}", data_dir=data_dir, seeds="1")
    assert killed.returncode == -9, killed.stderr[-3000:]
    (run,) = find_runs(tmp_path / "b")
    stopped = load_metrics(run)
    assert stopped["status"] == "completed" and stopped["test"] == {} and stopped["epochs"] == 3
    assert saved_status(run) == UNTESTED
    assert publish_records(tmp_path / "b", tmp_path / "published") == []  # not a result yet

    rerun = sweep(tmp_path, tmp_path / "b", *testing, data_dir=data_dir, seeds="1")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    out = rerun.stdout + rerun.stderr
    assert "Resuming" in out and "Skipped" not in out and "Training:" not in out  # it only tests
    done = jobs(tmp_path / "b")[1]
    assert done["status"] == "completed" and done["test"] and saved_status(run) == "completed"
    assert comparable(done) == comparable(reference[1])
    assert_times_summed(done, pieces=2)
    assert done["history"] == stopped["history"]  # every second as trained: testing adds none
    assert len(publish_records(tmp_path / "b", tmp_path / "published")) == 1


def test_a_killed_joblib_sweep_rerun_finishes_both_jobs_with_the_uninterrupted_numbers(tmp_path, data_dir):
    """Jobs side by side in joblib's worker processes: one worker SIGKILLed takes the sweep down
    (joblib stops the other job too); the same command finishes both."""
    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    assert sweep(tmp_path, tmp_path / "a", *joblib, data_dir=data_dir).returncode == 0
    reference = jobs(tmp_path / "a")

    killed = sweep(tmp_path, tmp_path / "b", *joblib, kill=f"2:{STEP}", data_dir=data_dir)
    assert killed.returncode != 0
    assert any(load_metrics(r)["status"] != "completed" for r in find_runs(tmp_path / "b"))

    rerun = sweep(tmp_path, tmp_path / "b", *joblib, data_dir=data_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resuming" in rerun.stdout + rerun.stderr
    finished = jobs(tmp_path / "b")
    assert sorted(finished) == [1, 2] and all(m["status"] == "completed" for m in finished.values())
    for seed in (1, 2):
        assert comparable(finished[seed]) == comparable(reference[seed])
    assert finished[2]["pieces"] == 2
    summary = (tmp_path / "b" / "sweep_summary.json").read_text()
    assert '"completed": 2' in summary and '"failed": []' in summary


def test_slurm_requeue_signal_checkpoints_requeues_and_the_requeued_job_finishes_the_run(tmp_path, data_dir):
    """SLURM as Lightning detects it (an array task of a submitit sweep), ``scontrol`` a stub that
    records its arguments: the requeue signal stops the job with a checkpoint where it stands."""
    assert sweep(tmp_path, tmp_path / "a", data_dir=data_dir, seeds="1").returncode == 0
    (reference,) = find_runs(tmp_path / "a")

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "lmvit",
        "SLURM_JOB_ID": "4243",
        "SLURM_ARRAY_JOB_ID": "4242",
        "SLURM_ARRAY_TASK_ID": "0",
        "SLURM_NODELIST": "node1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }
    requeue = ["+callbacks.kill.sig=SIGUSR1"]
    stopped = sweep(tmp_path, tmp_path / "b", *requeue, kill=f"1:{STEP}", data_dir=data_dir, seeds="1", env=slurm)
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242_0"]
    (run,) = find_runs(tmp_path / "b")
    assert load_metrics(run)["status"] == "interrupted"
    lines = [line for line in (stopped.stdout + stopped.stderr).splitlines() if "requeue signal at" in line]
    assert len(lines) == 1 and "requeued SLURM job 4242_0" in lines[0]
    import torch

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEP  # where it stood, not the step-16 periodic checkpoint
    assert not list(run.glob("hpc_ckpt_*.ckpt"))  # Lightning's own requeue checkpoint is not written

    # the requeued job: the same command, the same environment, no signal this time
    requeued = sweep(tmp_path, tmp_path / "b", *requeue, data_dir=data_dir, seeds="1", env=slurm)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "Resuming" in requeued.stdout + requeued.stderr
    finished = load_metrics(run)
    assert finished["status"] == "completed"
    assert comparable(finished) == comparable(load_metrics(reference))
    assert_times_summed(finished, pieces=2)
    assert calls.read_text().split() == ["requeue", "4242_0"]  # requeued once


def test_a_rerun_with_interpolating_overrides_is_checked_against_the_saved_sweep(tmp_path):
    """A sweep whose overrides interpolate a swept key (the tuning's ``optimizer.lr=${trial.lr}``)
    is compared as typed: the same overrides pass, other ones are refused with one line."""
    from omegaconf import OmegaConf

    from lmvit.hydra_callbacks import SweepSummary

    def sweep(*task: str):
        return OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "overrides": {"task": list(task)}}})

    typed = ["+trial={lr:0.1},{lr:0.2}", "optimizer.lr=${trial.lr}", "seed=0"]
    OmegaConf.save(sweep(*typed), tmp_path / "multirun.yaml")
    SweepSummary().on_multirun_start(sweep(*reversed(typed)))  # the same sweep: no error, nothing resolved
    with pytest.raises(SystemExit) as stop:
        SweepSummary().on_multirun_start(sweep(*typed[:2], "seed=1"))
    assert stop.value.code == 2
