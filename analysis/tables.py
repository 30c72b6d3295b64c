"""The study's Tables 1-3 from our runs, with the published numbers and the difference beside ours.

Each table is a DataFrame with the study's columns (ours), then ``<column> (study)`` and
``<column> (diff)`` for every metric column; ``Config`` is the study's row where the run
reproduces one (``study_config`` from the preset, or an exact configuration match) and ``-``
otherwise. One row per completed run; a ``Note`` says when a row is not comparable.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.runs import completed
from analysis.study import (
    TABLE1_COLUMNS,
    TABLE1_METRICS,
    TABLE2_COLUMNS,
    TABLE2_METRICS,
    TABLE3_COLUMNS,
    architecture,
    config_label,
    study_rows,
)

OFFLINE_TRAIN_FILES = ("wiki.valid.tokens", "wiki.test.tokens")


def _sort_key(study_config: str | None) -> tuple:
    if not isinstance(study_config, str):
        return (1, 0, 0)
    _, _, rest = study_config.partition("/")
    number, _, epochs = rest.partition("@")
    return (0, int(number) if number.isdigit() else 0, int(epochs or 0))


def _ordered(runs: pd.DataFrame) -> pd.DataFrame:
    keys = runs["study_config"].map(_sort_key)
    return runs.assign(_key=keys).sort_values(["_key", "label"]).drop(columns="_key")


def _note(run: pd.Series, study: pd.Series | None) -> str:
    notes = []
    if study is not None and pd.notna(run.get("epochs")) and run["epochs"] != study["max_epochs"]:
        notes.append(f"{int(run['epochs'])} of the study's {int(study['max_epochs'])} epochs")
    train_file = run.get("train_file")
    if isinstance(train_file, str) and train_file.endswith(OFFLINE_TRAIN_FILES):
        notes.append(f"trained on {train_file.rsplit('/', 1)[-1]}: not comparable with WikiText-2 results")
    tokenizer = run.get("tokenizer")
    if run.get("task") == "lstm" and isinstance(tokenizer, str) and tokenizer != "npz":
        notes.append(f"{tokenizer} tokens: perplexity per {tokenizer} token, the study's per GPT-1 BPE token")
    return "; ".join(notes)


def _with_study(rows: list[dict], runs: pd.DataFrame, metrics: dict[str, str]) -> pd.DataFrame:
    """Add ``<col> (study)`` and ``<col> (diff)`` (ours - study) after the study's columns."""
    study = study_rows()
    table = pd.DataFrame(rows)
    for column in ("Layers", "Epochs"):
        if column in table.columns:
            table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
    for column, key in metrics.items():
        published = [
            study.at[sc, key] if isinstance(sc, str) and sc in study.index and key in study.columns
            else np.nan
            for sc in runs["study_config"]
        ]
        table[f"{column} (study)"] = pd.to_numeric(pd.Series(published, index=table.index), errors="coerce")
        table[f"{column} (diff)"] = pd.to_numeric(table[column], errors="coerce") - table[f"{column} (study)"]
    order = []
    for column in [c for c in table.columns if not c.endswith((" (study)", " (diff)"))]:
        order.append(column)
        if column in metrics:
            order += [f"{column} (study)", f"{column} (diff)"]
    return table[order]


def _study_row(study_config) -> pd.Series | None:
    study = study_rows()
    return study.loc[study_config] if isinstance(study_config, str) and study_config in study.index else None


def _study_table(runs: pd.DataFrame, task: str, describe, metrics: dict, empty_columns: list) -> pd.DataFrame:
    """One row per completed run of ``task``: ``describe(run)`` columns, then ``metrics``, a note,
    and the study's numbers with the difference where the configuration matches."""
    runs = _ordered(completed(runs)[lambda r: r["task"] == task])
    rows = []
    for _, run in runs.iterrows():
        row = {
            "Config": config_label(run["study_config"]) if isinstance(run["study_config"], str) else "-",
            "Label": run["label"],
            **describe(run),
        }
        row.update({col: run.get(key, np.nan) for col, key in metrics.items()})
        row["Note"] = _note(run, _study_row(run["study_config"]))
        row["Run"] = run["run"]
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=empty_columns)
    return _with_study(rows, runs, metrics)


def table1(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 1 (LSTM): Optimizer, Layers, Epochs, Train loss, Train PPL, Val loss, Val PPL, Train time."""
    return _study_table(
        runs,
        "lstm",
        lambda run: {"Optimizer": run["optimizer_name"], "Layers": run["num_layers"], "Epochs": run["epochs"]},
        TABLE1_METRICS,
        ["Config", "Label", *TABLE1_COLUMNS, "Note", "Run"],
    )


def table2(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 2 (ViT): Config, Architecture, Layers, Optimizer, Train loss, Train Acc, Val loss,
    Val Acc, Train Time (and Epochs, which the study fixes at 10)."""
    return _study_table(
        runs,
        "vit",
        lambda run: {
            "Architecture": architecture(run["norm"]),
            "Layers": run["num_layers"],
            "Optimizer": run["optimizer_name"],
            "Epochs": run["epochs"],
        },
        TABLE2_METRICS,
        [*TABLE2_COLUMNS, "Label", "Epochs", "Note", "Run"],
    )


def table3(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 3 (ViT memory): the study's GPU memory column, ours from ``memory/peak_gpu_mb``
    (``torch.cuda.max_memory_allocated``). CPU-only runs have no GPU number: their peak
    process memory (RSS) is shown in ``Peak RSS (MB)`` instead and no difference is computed."""
    runs = _ordered(completed(runs)[lambda r: r["task"] == "vit"])
    rows = []
    for _, run in runs.iterrows():
        rows.append({
            "Config": config_label(run["study_config"]) if isinstance(run["study_config"], str) else "-",
            "Label": run["label"],
            "Architecture": architecture(run["norm"]),
            "Layers": run["num_layers"],
            "Optimizer": run["optimizer_name"],
            "GPU memory (MB)": run.get("peak_memory_mb"),
            "Peak RSS (MB)": run.get("peak_rss_mb"),
            "Run": run["run"],
        })
    if not rows:
        return pd.DataFrame(columns=[*TABLE3_COLUMNS, "Label", "Peak RSS (MB)", "Run"])
    return _with_study(rows, runs, {"GPU memory (MB)": "peak_memory_mb"})


def _fmt(value, decimals: int) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.{decimals}f}"
    return str(value)


def to_markdown(table: pd.DataFrame, decimals: int = 4) -> str:
    """Markdown with one cell per study column: ``ours (study X, diff +Y)`` where matched."""
    if table.empty:
        return "_No completed runs._\n"
    metric_cols = [c[: -len(" (study)")] for c in table.columns if c.endswith(" (study)")]
    shown = [c for c in table.columns if not c.endswith((" (study)", " (diff)")) and c != "Run"]
    lines = ["| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown)]
    for _, row in table.iterrows():
        cells = []
        for col in shown:
            digits = 1 if "time" in col.lower() or "MB" in col else 3 if "PPL" in col else decimals
            cell = _fmt(row[col], digits)
            if col in metric_cols and pd.notna(row[f"{col} (study)"]):
                study = _fmt(row[f"{col} (study)"], digits)
                cell = cell or "n/a"
                diff = row[f"{col} (diff)"]
                cell += f" (study {study}, diff {diff:+.{digits}f})" if pd.notna(diff) else f" (study {study})"
            cells.append(cell.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def all_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"table1": table1(runs), "table2": table2(runs), "table3": table3(runs)}
