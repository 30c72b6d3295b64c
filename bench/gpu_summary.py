"""Table of the GPU check's training runs (their metrics.json), beside the study's figures.

    python bench/gpu_summary.py NAME=RUN_LOG_DIR [NAME=RUN_LOG_DIR ...] [--out results.jsonl]

Prints a Markdown table (epoch time, total train time, val accuracy, peak GPU memory) and appends
one JSON line per run to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# Table 2 config 2 (2-layer pre-norm ViT, AdamW, 10 epochs) and Table 3
STUDY = {"train_seconds": 392.75, "val_acc": 0.6173, "peak_gpu_mb": 1294}


def row(name: str, log_dir: Path) -> dict:
    paths = sorted(log_dir.rglob("metrics.json"))
    if not paths:
        return {"run": name, "status": "missing (no metrics.json: see its log)"}
    m = json.loads(paths[-1].read_text())
    epochs = [h["time/epoch_s"] for h in m.get("history", []) if "time/epoch_s" in h]
    return {
        "run": name,
        "status": m["status"],
        "epochs": m["epochs"],
        "epoch_s_median": round(statistics.median(epochs), 2) if epochs else None,
        "first_epoch_s": round(epochs[0], 2) if epochs else None,
        "train_seconds": round(m["train_seconds"], 1),
        "val_acc": m["final"].get("val/acc"),
        "best_val_acc": m["best"].get("val/acc"),
        "peak_gpu_mb": m["peak_memory_mb"] and round(m["peak_memory_mb"]),
        "peak_rss_mb": m["peak_rss_mb"] and round(m["peak_rss_mb"]),
        "overrides": m["overrides"],
        "versions": m["versions"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="NAME=LOG_DIR")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    rows = [row(*r.split("=", 1)[0:1], Path(r.split("=", 1)[1])) for r in args.runs]
    print("| run | status | epochs | epoch s (median) | first epoch s | train s | val acc | peak GPU MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| study (Table 2 cfg 2, Table 3) | | 10 | | | {STUDY['train_seconds']} | "
        f"{STUDY['val_acc']:.4f} | {STUDY['peak_gpu_mb']} |"
    )
    for r in rows:
        acc = r.get("val_acc")
        print(
            f"| {r['run']} | {r['status']} | {r.get('epochs', '')} | {r.get('epoch_s_median', '')} | "
            f"{r.get('first_epoch_s', '')} | {r.get('train_seconds', '')} | "
            f"{'' if acc is None else f'{acc:.4f}'} | {r.get('peak_gpu_mb', '')} |"
        )
    if args.out:
        with args.out.open("a") as f:
            for r in rows:
                f.write(json.dumps({"bench": "gpu_check_run", **r}) + "\n")


if __name__ == "__main__":
    main()
