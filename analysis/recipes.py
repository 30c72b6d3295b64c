"""Beyond the study: runs of the ``vit_strong*`` and ``lstm_regularized`` presets, each with its
recipe (read from the run's config), beside the study's best number and the published anchor.

The report adds this table (``beyond.md`` / ``.csv``) when such runs are present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.runs import _get, completed
from analysis.study import study_rows
from lmvit.runs import read_config

PREFIXES = ("vit_strong", "lstm_regularized")
TITLES = {"beyond": "Beyond the study: stronger recipes (vit_strong*, lstm_regularized)"}
# the study's best for the task (its row, metric, value) and a published anchor
STUDY_BEST = {"vit": ("table2/6@50", "val/acc"), "lstm": ("table1/2", "val/ppl")}
ANCHORS = {
    "vit": "omihub777/ViT-CIFAR: 90.92% test acc, 200 epochs, 6.3M params (GoogLeNet in the study: 90.4%)",
    "lstm": "the study's LSTM 1L AdamW: train PPL 81.0 vs val 144.6 at 10 epochs (overfits)",
}
COLUMNS = [
    "Experiment",
    "Label",
    "Recipe",
    "Epochs",
    "Params",
    "Best val",
    "Val (EMA)",
    "Test",
    "Metric",
    "Study's best",
    "Train time",
    "Anchor",
    "Run",
]


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def recipe(config: dict[str, Any]) -> str:
    """A run's recipe in one line: architecture, augmentation, regularisation, optimisation."""
    get = lambda key, default=None: _get(config, key, default)  # noqa: E731
    parts = []
    if config.get("task") == "vit":
        parts.append(
            f"{get('model.embed_dim')}d {get('model.num_layers')}L {get('model.num_heads')}h "
            f"p{get('model.patch_size')} mlp {get('model.hidden_dim')}"
        )
        parts.append(f"aug: flip+crop{' + ' + get('data.augment') if get('data.augment') else ''}")
        for key, name in (
            ("data.random_erasing", "erasing p"),
            ("data.mixup", "mixup a"),
            ("data.cutmix", "cutmix a"),
            ("model.label_smoothing", "LS "),
            ("model.drop_path", "drop path "),
            ("model.dropout", "dropout "),
            ("model.attn_dropout", "attn dropout "),
        ):
            if get(key):
                parts.append(f"{name}{_fmt(get(key))}")
    else:
        parts.append(f"{get('model.num_layers')}L E{get('model.embedding_size')} H{get('model.hidden_size')}")
        for key, name in (("model.embedding_dropout", "emb dropout "), ("model.output_dropout", "out dropout ")):
            if get(key):
                parts.append(f"{name}{_fmt(get(key))}")
    optimizer = str(get("optimizer._target_", "")).rsplit(".", 1)[-1]
    parts.append(
        f"{optimizer} lr {_fmt(get('optimizer.lr'))} wd {_fmt(get('optimizer.weight_decay', 0))}"
        + (" (no decay on norms/biases/embeddings)" if get("model.no_weight_decay") else "")
    )
    if get("scheduler._target_"):
        parts.append(f"warm-up {_fmt(get('scheduler.warmup_fraction'))} + cosine")
    if get("trainer.gradient_clip_val"):
        parts.append(f"clip {_fmt(get('trainer.gradient_clip_val'))}")
    if get("callbacks.ema.decay"):
        parts.append(f"EMA {_fmt(get('callbacks.ema.decay'))}")
    if get("trainer.precision") not in (None, "32-true", 32):
        parts.append(str(get("trainer.precision")))
    return "; ".join(parts)


def beyond_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per completed run whose experiment starts with one of :data:`PREFIXES`."""
    if runs.empty or "experiment" not in runs.columns:
        return pd.DataFrame(columns=COLUMNS)
    done = completed(runs)
    done = done[done["experiment"].map(lambda e: isinstance(e, str) and e.startswith(PREFIXES)).astype(bool)]
    study = study_rows()
    rows = []
    for _, run in done.sort_values(["task", "experiment", "run"]).iterrows():
        task = run["task"]
        metric = "val/acc" if task == "vit" else "val/ppl"
        best = run.get(f"best:{metric}", np.nan)
        row_key, study_metric = STUDY_BEST[task]
        rows.append(
            {
                "Experiment": run["experiment"],
                "Label": run["label"],
                "Recipe": recipe(read_config(Path(run["run"]))),
                "Epochs": run.get("epochs"),
                "Params": run.get("params"),
                "Best val": best if pd.notna(best) else run.get(metric, np.nan),
                "Val (EMA)": run.get(f"{metric}_ema", np.nan),
                "Test": run.get("test/acc" if task == "vit" else "test/ppl", np.nan),
                "Metric": "accuracy" if task == "vit" else "perplexity",
                "Study's best": f"{study.at[row_key, study_metric]:g} ({row_key})",
                "Train time": run.get("train_seconds", np.nan),
                "Anchor": ANCHORS[task],
                "Run": run["run"],
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def beyond_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{"beyond": table}`` when there are such runs, else ``{}`` (reports without them are unchanged)."""
    table = beyond_table(runs)
    return {"beyond": table} if not table.empty else {}
