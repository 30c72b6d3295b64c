"""What every benchmark shares: paired timing, the JSON line, the machine, real CIFAR-10 batches.

A benchmark gives ``paired`` one callable per variant; each call runs one measurement and
returns seconds per unit (per step, per image, ...). After ``warmup`` rounds, the variants run
alternately in ABBA order (A B, then B A, ...) for ``repeats`` rounds, so slow drift of a shared
machine lands on all variants alike. ``report`` prints one JSON line: medians, the ratio of each
variant's median to the baseline's, and the median of the per-round ratios (more robust on a
noisy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

import lmvit.resolvers  # noqa: E402, F401  (the config's ${lmvit.*} resolvers, for every compose below)


def parser(description: str, repeats: int = 7, warmup: int = 1) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--repeats", type=int, default=repeats, help="measured rounds per variant")
    p.add_argument("--warmup", type=int, default=warmup, help="unmeasured rounds first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None, help="append the JSON line to this file too")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); 1 is steadier on a shared machine",
    )
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], n: int, device: str | torch.device = "cpu") -> float:
    """Seconds per call of ``fn`` over ``n`` calls (device work included)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / n


def paired(variants: dict[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run the variants alternately (ABBA), ``warmup`` unmeasured rounds first."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name].append(float(variants[name]()))
    return samples


def machine(device: str | torch.device = "cpu") -> dict:
    from lmvit.hardware import cpu_name

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_name(),  # which CPU (family/model, bf16): a ratio holds for runs on that CPU
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import pytorch_lightning as pl

        info["pytorch_lightning"] = pl.__version__
    except ImportError:
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def report(
    bench: str,
    samples: dict[str, list[float]],
    baseline: str,
    unit: str,
    target: tuple[str, str, float] | None = None,
    out: Path | None = None,
    device: str = "cpu",
    **extra,
) -> dict:
    """Print (and optionally append to ``out``) one JSON line; ``target`` = (variant, "<=" | ">=", bound)
    on the ratio of medians."""
    medians = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {k: medians[k] / medians[baseline] for k in samples if k != baseline}
    paired_ratios = {
        k: statistics.median(a / b for a, b in zip(samples[k], samples[baseline])) for k in samples if k != baseline
    }
    line = {
        "bench": bench,
        "unit": unit,
        "baseline": baseline,
        "median": {k: _round(v) for k, v in medians.items()},
        "ratio": {k: round(v, 3) for k, v in ratios.items()},
        "paired_ratio": {k: round(v, 3) for k, v in paired_ratios.items()},
        "repeats": len(samples[baseline]),
        "samples": {k: [_round(x) for x in v] for k, v in samples.items()},
        **extra,
    }
    if target is not None:
        name, op, bound = target
        value = ratios[name]
        line["target"] = f"ratio[{name}] {op} {bound}"
        line["pass"] = bool(value <= bound if op == "<=" else value >= bound)
    return emit(line, out, device)


def emit(line: dict, out: Path | None = None, device: str = "cpu") -> dict:
    """Add the machine, print the line as JSON, and append it to ``out``."""
    line["machine"] = machine(device)
    text = json.dumps(line)
    print(text, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(text + "\n")
    return line


def _round(v: float) -> float:
    return float(f"{v:.4g}")


def data_dir() -> Path:
    return Path(os.environ.get("DATA_DIR", ROOT / "data")).expanduser().resolve()


def cifar10_batches(n_batches: int, batch_size: int = 128, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` real, augmented and normalised CIFAR-10 training batches (made once)."""
    from datamodules.cifar10 import CIFAR10DataModule

    dm = CIFAR10DataModule(
        data_dir=str(data_dir()),
        batch_size=batch_size,
        num_workers=0,
        train_subset=n_batches * batch_size,
        download=False,
    )
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(seed)
    return [(x.contiguous(), y) for x, y in dm.train_dataloader()][:n_batches]
