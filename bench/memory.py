"""Peak memory of each configuration of the study, through train.py.

Each configuration runs in its own process (peak RSS only grows within a process):
``train.py <config> trainer.max_epochs=1`` for a few training and validation batches at the
study's batch size, and its ``metrics.json`` gives ``peak_rss_mb`` (CPU: the whole process,
Python, torch and the CIFAR-10 tensors included) and ``peak_memory_mb`` (GPU: peak allocated by
PyTorch, the study's Table 3 figure).

    python bench/memory.py [--only 2 6] [--device cuda] [-- extra overrides]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import common

# Table 2 of the study (configs 1-7): Table 3 gives their GPU memory in MB
CONFIGS = {
    1: (["optimizer=adam", "model.num_layers=2"], 1294),
    2: (["optimizer=adamw", "model.num_layers=2"], 1294),
    3: (["optimizer=sgd", "model.num_layers=2"], 1286),
    4: (["optimizer=momentum", "model.num_layers=2"], 1290),
    5: (["optimizer=adamw", "model.num_layers=4"], 1690),
    6: (["optimizer=adamw", "model.num_layers=6"], 2086),
    7: (["optimizer=adamw", "model.num_layers=6", "model.norm=post"], 2086),
    # the LSTM configurations of Table 1 join here once model=lstm lands
}


def run_config(overrides: list[str], log_dir: Path, device: str, batches: int) -> dict:
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    args = [
        sys.executable,
        str(common.ROOT / "train.py"),
        "model=vit",
        *overrides,
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={batches}",
        "trainer.limit_val_batches=2",
        "test=false",
        f"trainer.accelerator={accelerator}",
        f"paths.log_dir={log_dir}",
        f"data.data_dir={common.data_dir()}",
    ]
    proc = subprocess.run(
        args, cwd=common.ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    if proc.returncode != 0:
        raise SystemExit(f"train.py {' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
    (path,) = log_dir.rglob("metrics.json")
    return json.loads(path.read_text())


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--only", type=int, nargs="*", default=sorted(CONFIGS))
    p.add_argument("--batches", type=int, default=2, help="training batches per run")
    p.add_argument("overrides", nargs="*", help="extra overrides for every run, e.g. data.num_workers=0")
    args = common.parse(p)
    rows = {}
    for number in args.only:
        overrides, study_mb = CONFIGS[number]
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
            m = run_config(overrides + args.overrides, Path(tmp), args.device, args.batches)
        rows[number] = {
            "overrides": overrides,
            "peak_rss_mb": round(m["peak_rss_mb"]),
            "peak_gpu_mb": m["peak_memory_mb"] and round(m["peak_memory_mb"]),
            "study_gpu_mb": study_mb,
            "params": m["params"].get("learnable"),
        }
    common.emit(
        {
            "bench": "memory_per_config",
            "unit": "MB",
            "batches": args.batches,
            "extra_overrides": args.overrides,
            "configs": rows,
        },
        args.out,
        args.device,
    )


if __name__ == "__main__":
    main()
