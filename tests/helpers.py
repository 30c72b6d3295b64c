"""What tests share: running ``train.py`` as users do, reading run directories, comparing floats
with tolerances relative to the values compared, and test-only callbacks loaded into ``train.py``
subprocesses through Hydra overrides (``+callbacks.kill._target_=tests.helpers.KillAtStep``).

Tests import these one way: ``from tests.helpers import ...``.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, msg: str | None = None) -> None:
    """``actual`` equals ``expected`` up to ``rtol`` of the compared values' scale.

    Two kernels computing the same function (another batch size, another vector unit, a fused
    path) differ in the last bits of each element, relative to the magnitudes summed into it, not
    to the element itself: the absolute tolerance is ``rtol * max|expected|``, so the test holds on
    any CPU whatever the values' magnitude.
    """
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-12), msg=msg)


def run_train(
    *overrides: str,
    log_dir: Path,
    data_dir: Path | None = None,
    check: bool = True,
    timeout: int = 600,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python train.py <overrides>`` in a subprocess with logs under ``log_dir``."""
    args = [sys.executable, str(ROOT / "train.py"), *overrides, f"paths.log_dir={log_dir}"]
    if data_dir is not None:
        args.append(f"data.data_dir={data_dir}")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"train.py {' '.join(overrides)} exited {proc.returncode}\n"
            f"--- stdout (tail)\n{proc.stdout[-4000:]}\n--- stderr (tail)\n{proc.stderr[-6000:]}"
        )
    return proc


def find_runs(log_dir: Path) -> list[Path]:
    """Run directories (those holding metrics.json) below ``log_dir``, sorted."""
    return sorted(p.parent for p in Path(log_dir).rglob("metrics.json"))


def load_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def hparams_view(logdir: Path):
    """What TensorBoard's HParams tab shows for ``logdir``, through its own backend."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(
        logdir=str(logdir), multiplexer=mux, data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir))
    )
    backend = backend_context.Context(tb)
    experiment = get_experiment.Handler(context.RequestContext(), backend, "", api_pb2.GetExperimentRequest()).run()
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=1000,
        allowed_statuses=[
            api_pb2.STATUS_UNKNOWN,
            api_pb2.STATUS_SUCCESS,
            api_pb2.STATUS_FAILURE,
            api_pb2.STATUS_RUNNING,
        ],
    )
    groups = list_session_groups.Handler(context.RequestContext(), backend, "", request).run()
    return experiment, groups


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A CPU Trainer for in-process tests: no logger, checkpointing, progress bar, summary or sanity
    check unless ``kwargs`` ask for them."""
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    return pl.Trainer(**{**options, **kwargs})


class KillAtStep(pl.Callback):
    """SIGKILLs its own process after training step ``step`` (before that step's checkpoint:
    Lightning runs checkpoint callbacks last), like a node dying mid-epoch.

    ``step=None`` reads ``LMVIT_KILL_AT`` (``"<seed>:<step>"``, ``"any:<step>"``; unset: never), so a
    sweep can be killed in one job and rerun with the very same overrides; ``seed`` is the job's
    (``+callbacks.kill.seed=${seed}``). ``sig="SIGTERM"`` sends SIGTERM to the whole process group
    instead, as a scheduler or a container stop does (the loader workers get it too).
    ``sig="SIGUSR1"`` sends SLURM's requeue signal to the training process; ``sig="ENOSPC"`` raises
    the ``OSError`` of a full disk instead of signalling.
    ``validation_batch=k`` signals after validation batch ``k`` of the validation that follows step
    ``step`` instead (a stop in the middle of an epoch's validation); ``test_batch=k`` after test
    batch ``k`` of a run that trained ``step`` steps (a stop while it tests); ``fit_end=true`` at
    the end of ``fit`` after ``step`` steps (after Lightning's last check for SIGTERM)."""

    def __init__(
        self,
        step: int | None = None,
        seed: int | None = None,
        sig: str = "SIGKILL",
        validation_batch: int | None = None,
        test_batch: int | None = None,
        fit_end: bool = False,
    ) -> None:
        self.step, self.seed, self.sig, self.validation_batch = step, seed, sig, validation_batch
        self.test_batch, self.fit_end = test_batch, fit_end

    def _target(self) -> int | None:
        if self.step is not None:
            return self.step
        which, _, step = os.environ.get("LMVIT_KILL_AT", "").partition(":")
        return int(step) if step and which in ("any", str(self.seed)) else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        elsewhere = self.validation_batch is not None or self.test_batch is not None or self.fit_end
        if not elsewhere and trainer.global_step == self._target():
            self._signal()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or self.validation_batch is None:
            return
        if trainer.global_step == self._target() and batch_idx == self.validation_batch:
            self._signal()

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.fit_end and trainer.global_step == self._target():
            self._signal()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.test_batch is not None and batch_idx == self.test_batch and trainer.global_step == self._target():
            self._signal()

    def _signal(self) -> None:
        if self.sig == "ENOSPC":  # the disk filled up (as Lightning's checkpoint write reports it)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "checkpoints/last.ckpt")
        if self.sig in ("SIGKILL", "SIGUSR1"):  # a dying node; SLURM's requeue signal to the task
            os.kill(os.getpid(), getattr(signal, self.sig))
        else:
            os.killpg(os.getpgrp(), getattr(signal, self.sig))
