"""Accuracy under a CPU precision setting vs fp32: the same seeds trained both ways, a paired t-test.

Each case trains ``train.py`` at a reduced budget once per seed and precision (``nice -n 10``,
one run at a time, into ``--dir``); runs with the same seed start from the same weights and see
the same batches, so the per-seed differences are paired. Reported per case (one JSON line):
the metric per seed and precision, the mean difference (setting - fp32), its 95% t-interval and
the p-value of ``scipy.stats.ttest_rel``.

    python bench/precision_accuracy.py --out bench/results/precision_accuracy.jsonl
    python bench/precision_accuracy.py --case vit --seeds 0 1 2 3 --precision bf16-mixed

Cases: ``vit`` = Table 2 config 2 (2 layers, pre-norm, AdamW) on 5000 training images for 2 epochs,
validated on the full validation split (5000 images); ``lstm`` = Table 1 config 1 (1 layer) on
WikiText-2 as in the shared data folder (``data=wikitext2_offline``), a few batches. Runs already
finished in ``--dir`` (a ``metrics.json`` with status completed) are read, not trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import common
from scipy import stats

CASES = {
    "vit": {
        "overrides": [
            "experiment=table2_2_adamw",
            "data.train_subset=2560",
            "data.num_workers=1",
            "trainer.max_epochs=1",
        ],
        "metric": "val/acc",
    },
    "lstm": {
        "overrides": [
            "experiment=table1_1_adam",
            "data=wikitext2_offline",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=8",
            "trainer.limit_val_batches=6",
        ],
        "metric": "val/ppl",
    },
}
COMMON = ["test=false", "logger=null", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null"]


def run(case: str, precision: str, seed: int, root: Path) -> float:
    run_dir = root / case / precision / f"seed{seed}"
    metrics = run_dir / "metrics.json"
    if not (metrics.exists() and json.loads(metrics.read_text())["status"] == "completed"):
        cmd = [
            "nice", "-n", "10", sys.executable, str(common.ROOT / "train.py"),
            *CASES[case]["overrides"], *COMMON,
            f"seed={seed}", f"trainer.precision={precision}", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        print(" ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, cwd=common.ROOT, stdout=subprocess.DEVNULL, env=os.environ)
    summary = json.loads(metrics.read_text())
    return float(summary["final"][CASES[case]["metric"]])


def paired_summary(setting: list[float], fp32: list[float], confidence: float = 0.95) -> dict:
    """Mean of setting - fp32 over the seeds, its t-interval and the paired t-test's p-value."""
    diffs = [a - b for a, b in zip(setting, fp32)]
    mean = statistics.fmean(diffs)
    sem = statistics.stdev(diffs) / len(diffs) ** 0.5
    half = stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1) * sem
    test = stats.ttest_rel(setting, fp32)
    return {
        "mean_diff": mean,
        "ci95": [mean - half, mean + half],
        "p_value": float(test.pvalue),
        "fp32_sd": statistics.stdev(fp32),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--precision", default="bf16-mixed", help="the setting compared with 32-true")
    p.add_argument("--dir", type=Path, default=common.ROOT / "logs" / "precision_accuracy")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if len(args.seeds) < 2:
        raise SystemExit("--seeds: give at least 2 seeds (a paired test needs them)")
    for case in args.case:
        values = {prec: [] for prec in ("32-true", args.precision)}
        for seed in args.seeds:  # fp32 and the setting alternate, so a slow hour lands on both
            for prec in values:
                values[prec].append(run(case, prec, seed, args.dir))
        common.emit(
            {
                "bench": "precision_accuracy",
                "case": case,
                "metric": CASES[case]["metric"],
                "budget": CASES[case]["overrides"],
                "seeds": args.seeds,
                "values": values,
                "setting": args.precision,
                **paired_summary(values[args.precision], values["32-true"]),
            },
            args.out,
        )


if __name__ == "__main__":
    main()
