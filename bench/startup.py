"""Start-up: seconds from ``python train.py`` to the first training step, against a bare
``python -c "import torch, pytorch_lightning"``, each in a fresh subprocess.

A sweep of short jobs pays the start-up once per job. The ``train`` side runs ``train.py`` with
the default configuration (the study's ViT on CIFAR-10: imports, Hydra's composition, the
config's validation, CIFAR-10's load and split, the model, the Trainer and its callbacks, the
sanity validation) and a callback that records the wall-clock time when the first training batch
starts and ends the process there. The ``imports`` side is the floor nothing of ours can go under.
The two alternate (ABBA) after a warm-up round (which also fills the OS file cache), medians and
per-round ratios are reported.

    python bench/startup.py [--repeats 5] [--warmup 1] [-- extra train.py overrides]
    python bench/startup.py -- data.num_workers=0
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl

try:  # run as a script (bench/ on sys.path) or imported by train.py as bench.startup (FirstStep)
    import common
except ImportError:
    from bench import common

STAMP_ENV = "LMVIT_FIRST_STEP_STAMP"


class FirstStep(pl.Callback):
    """Writes ``time.time()`` to $LMVIT_FIRST_STEP_STAMP when the first training batch starts,
    then ends the process at once (nothing after the first step is measured)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        Path(os.environ[STAMP_ENV]).write_text(repr(time.time()))
        sys.stdout.flush()
        os._exit(0)


def run_train(overrides: list[str], tmp: Path) -> float:
    stamp = tmp / "stamp"
    stamp.unlink(missing_ok=True)
    args = [
        sys.executable,
        str(common.ROOT / "train.py"),
        *overrides,
        f"paths.log_dir={tmp / 'logs'}",
        f"data.data_dir={common.data_dir()}",
        "+callbacks.first_step._target_=bench.startup.FirstStep",
    ]
    start = time.time()
    proc = subprocess.run(
        args,
        cwd=common.ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, STAMP_ENV: str(stamp), "PYTHONUNBUFFERED": "1"},
    )
    if proc.returncode != 0 or not stamp.exists():
        raise SystemExit(f"train.py {' '.join(overrides)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return float(stamp.read_text()) - start


def run_imports() -> float:
    start = time.time()
    subprocess.run([sys.executable, "-c", "import torch, pytorch_lightning"], check=True)
    return time.time() - start


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeats=5, warmup=1)
    p.add_argument("overrides", nargs="*", help="extra train.py overrides, e.g. data.num_workers=0")
    args = common.parse(p)
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    overrides = [f"trainer.accelerator={accelerator}", *args.overrides]
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        samples = common.paired(
            {"imports": run_imports, "train": lambda: run_train(overrides, Path(tmp))},
            repeats=args.repeats,
            warmup=args.warmup,
        )
    common.report(
        "startup_to_first_step",
        samples,
        baseline="imports",
        unit="s",
        out=args.out,
        device=args.device,
        overrides=overrides,
    )


if __name__ == "__main__":
    main()
