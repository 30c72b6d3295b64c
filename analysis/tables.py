"""The study's Tables 1-3 from our runs, with the published numbers and the difference beside ours.

One row per configuration (its completed runs, one per seed; see ``analysis.runs``). Each table is
a DataFrame with the study's columns holding the mean over seeds, and for every metric column
``<column> (std)`` (sample std), ``<column> (n)``, ``<column> (ci95 low|high)`` (Student-t 95%
interval of the mean; NaN for one run), ``<column> (study)`` and ``<column> (diff)`` (mean - study).
``Config`` is the study's row where the configuration reproduces one (``study_config`` from the
preset, or an exact configuration match) and ``-`` otherwise; ``n``, ``Seeds`` and ``Run`` (the
run directories, ``; ``-separated) name the runs; a ``Note`` says when a row is not comparable.
``Budget`` (``conf/budget/``) is part of a configuration: rows are ordered by budget and never
mix two. Table 2 adds the second reference (:data:`analysis.study.SECOND_REFERENCE`) as
``Val Acc (ref2)`` and, for its full-scale rows (:func:`full_scale`), ``Envelope``: where our mean
and its seed interval lie against ``[min, max]`` of the study's and the second reference's number.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.findings import seeds
from analysis.runs import completed
from analysis.stats import summarize
from analysis.study import (
    SECOND_REFERENCE,
    TABLE1_COLUMNS,
    TABLE1_METRICS,
    TABLE2_COLUMNS,
    TABLE2_METRICS,
    TABLE3_COLUMNS,
    architecture,
    config_label,
    second_reference,
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
    """By budget, then the study's row, then label."""
    keys = runs["study_config"].map(_sort_key)
    budgets = runs["budget"] if "budget" in runs.columns else pd.Series("full", index=runs.index)
    return (
        runs.assign(_key=keys, _budget=budgets.fillna("full"))
        .sort_values(["_budget", "_key", "label"])
        .drop(columns=["_key", "_budget"])
    )


def full_scale(run: pd.Series) -> bool:
    """A run at the study's full scale: budget ``full``, a study row matched (its epochs), the
    whole training split and every batch of it."""
    subset, limit = run.get("train_subset"), run.get("limit_train_batches")
    return (
        (run.get("budget") or "full") == "full"
        and isinstance(run.get("study_config"), str)
        and not (pd.notna(subset) and subset)
        and (limit is None or pd.isna(limit) or limit in (1, 1.0))
    )


def envelope(low: float, high: float, mean: float, ci_low: float, ci_high: float) -> str:
    """Where ``mean`` and its interval ``[ci_low, ci_high]`` (NaN for one run) lie against the
    envelope ``[low, high]`` of two references."""
    where = "inside" if low <= mean <= high else "above" if mean > high else "below"
    if np.isnan(ci_low) or np.isnan(ci_high):
        return f"mean {where} [{low:.4f}, {high:.4f}] (one seed: no interval)"
    if low <= ci_low and ci_high <= high:
        return f"inside [{low:.4f}, {high:.4f}] with its interval"
    if ci_low > high or ci_high < low:
        return f"{where} [{low:.4f}, {high:.4f}] with its interval"
    return f"mean {where} [{low:.4f}, {high:.4f}], interval crosses its edge"


def _with_second_reference(table: pd.DataFrame, groups: list[pd.DataFrame]) -> pd.DataFrame:
    """On full-scale rows: ``Val Acc (ref2)`` and ``Envelope`` (see :func:`envelope`)."""
    refs, verdicts = [], []
    for members, (_, row) in zip(groups, table.iterrows()):
        first = members.iloc[0]
        ref = second_reference(first["study_config"]) if full_scale(first) else np.nan
        study = row.get("Val Acc (study)")
        refs.append(ref)
        if not np.isnan(ref) and pd.notna(study) and pd.notna(row["Val Acc"]):
            low, high = min(ref, study), max(ref, study)
            verdicts.append(envelope(low, high, row["Val Acc"], row["Val Acc (ci95 low)"], row["Val Acc (ci95 high)"]))
        else:
            verdicts.append("")
    table["Val Acc (ref2)"] = refs
    if any(verdicts):
        table["Envelope"] = verdicts
    return table


def _note(run: pd.Series, study: pd.Series | None) -> str:
    notes = []
    if study is not None and pd.notna(run.get("epochs")) and run["epochs"] != study["max_epochs"]:
        notes.append(f"{int(run['epochs'])} of the study's {int(study['max_epochs'])} epochs")
    subset = run.get("train_subset")
    if pd.notna(subset) and subset:
        notes.append(f"data.train_subset={int(subset)} training examples")
    precision = run.get("precision")
    if isinstance(precision, (str, int)) and str(precision) not in ("", "nan"):
        notes.append(f"precision {precision}")  # the study trained in fp32 (32-true)
    limit = run.get("limit_train_batches")
    if pd.notna(limit) and limit not in (1, 1.0):
        notes.append(f"trainer.limit_train_batches={limit}")
    train_file = run.get("train_file")
    if isinstance(train_file, str) and train_file.endswith(OFFLINE_TRAIN_FILES):
        notes.append(f"trained on {train_file.rsplit('/', 1)[-1]}: not comparable with WikiText-2 results")
    tokenizer = run.get("tokenizer")
    if run.get("task") == "lstm" and isinstance(tokenizer, str) and tokenizer != "npz":
        notes.append(f"{tokenizer} tokens: perplexity per {tokenizer} token, the study's per GPT-1 BPE token")
    return "; ".join(notes)


def kernel_note(members: pd.DataFrame) -> str:
    """Which of a configuration's runs stepped the optimizer with a fused kernel (the CPU default
    since the records say ``optimizer_kernel``; runs recorded before it used torch's loop), said only
    where one did: the update is the same, the time per step differs."""
    if "optimizer_kernel" not in members.columns:
        return ""
    fused = members["optimizer_kernel"] == "fused"
    if not fused.any():
        return ""
    if fused.all():
        return "fused optimizer kernel"
    return f"fused optimizer kernel for seed(s) {seeds(members[fused])}, torch's loop for {seeds(members[~fused])}"


# per metric column of a table, beside the mean: its spread over the configuration's seeds
SPREAD_SUFFIXES = (" (std)", " (n)", " (ci95 low)", " (ci95 high)")
STUDY_SUFFIXES = (" (study)", " (diff)", " (ref2)")
DERIVED_SUFFIXES = SPREAD_SUFFIXES + STUDY_SUFFIXES


def _with_study(table: pd.DataFrame, study_configs: list, metrics: dict[str, str]) -> pd.DataFrame:
    """Add ``<col> (study)`` and ``<col> (diff)`` (ours - study; ours is the mean over seeds)."""
    study = study_rows()
    for column in ("Layers", "Epochs", "n"):
        if column in table.columns:
            table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
    for column, key in metrics.items():
        published = [
            study.at[sc, key] if isinstance(sc, str) and sc in study.index and key in study.columns else np.nan
            for sc in study_configs
        ]
        table[f"{column} (study)"] = pd.to_numeric(pd.Series(published, index=table.index), errors="coerce")
        table[f"{column} (diff)"] = pd.to_numeric(table[column], errors="coerce") - table[f"{column} (study)"]
    return table


def _order_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Each metric column followed by its spread, then the study's number and the difference."""
    order = []
    for column in [c for c in table.columns if not c.endswith(DERIVED_SUFFIXES)]:
        order.append(column)
        order += [f"{column}{s}" for s in DERIVED_SUFFIXES if f"{column}{s}" in table.columns]
    return table[order]


def _study_row(study_config) -> pd.Series | None:
    study = study_rows()
    return study.loc[study_config] if isinstance(study_config, str) and study_config in study.index else None


def configuration_groups(runs: pd.DataFrame, task: str) -> list[pd.DataFrame]:
    """The completed runs of ``task``, one DataFrame per configuration (its seeds), in the
    study's order (by study row, then label)."""
    done = completed(runs)[lambda r: r["task"] == task]
    if done.empty:
        return []
    firsts = _ordered(done.drop_duplicates("group"))
    return [
        done[done["group"] == g].sort_values("seed", key=lambda s: pd.to_numeric(s, errors="coerce"))
        for g in firsts["group"]
    ]


def _spread(members: pd.DataFrame, key: str, column: str) -> dict:
    values = pd.to_numeric(members[key], errors="coerce") if key in members.columns else pd.Series(dtype=float)
    s = summarize(values)
    return {
        column: s.mean,
        f"{column} (std)": s.std,
        f"{column} (n)": s.n,
        f"{column} (ci95 low)": s.ci_low,
        f"{column} (ci95 high)": s.ci_high,
    }


def _study_table(
    runs: pd.DataFrame, task: str, describe, metrics: dict, empty_columns: list, compared: dict | None = None
) -> pd.DataFrame:
    """One row per configuration of ``task`` (its completed runs over seeds): ``describe(run)``
    columns, then ``metrics`` as mean with std, n and 95% interval, a note, and the study's
    numbers with the difference (for ``compared``, default all ``metrics``) where it matches."""
    groups = configuration_groups(runs, task)
    rows = []
    for members in groups:
        first = members.iloc[0]
        row = {
            "Config": config_label(first["study_config"]) if isinstance(first["study_config"], str) else "-",
            "Label": first["label"],
            "Budget": first.get("budget") or "full",
            **describe(first),
        }
        for column, key in metrics.items():
            row.update(_spread(members, key, column))
        row["n"] = len(members)
        row["Seeds"] = seeds(members)
        row["Note"] = "; ".join(n for n in (_note(first, _study_row(first["study_config"])), kernel_note(members)) if n)
        row["Run"] = "; ".join(members["run"])
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=empty_columns)
    table = _with_study(
        pd.DataFrame(rows), [g.iloc[0]["study_config"] for g in groups], metrics if compared is None else compared
    )
    if task == "vit" and "Val Acc" in metrics:
        table = _with_second_reference(table, groups)
    return _order_columns(table)


def table1(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 1 (LSTM): Optimizer, Layers, Epochs, Train loss, Train PPL, Val loss, Val PPL, Train time."""
    return _study_table(
        runs,
        "lstm",
        lambda run: {"Optimizer": run["optimizer_name"], "Layers": run["num_layers"], "Epochs": run["epochs"]},
        TABLE1_METRICS,
        ["Config", "Label", "Budget", *TABLE1_COLUMNS, "n", "Seeds", "Note", "Run"],
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
        [*TABLE2_COLUMNS, "Label", "Budget", "Epochs", "n", "Seeds", "Note", "Run"],
    )


def table3(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 3 (ViT memory): the study's GPU memory column, ours from ``memory/peak_gpu_mb``
    (``torch.cuda.max_memory_allocated``). CPU-only runs have no GPU number: their peak
    process memory (RSS) is shown in ``Peak RSS (MB)`` instead and no difference is computed."""
    return _study_table(
        runs,
        "vit",
        lambda run: {
            "Architecture": architecture(run["norm"]),
            "Layers": run["num_layers"],
            "Optimizer": run["optimizer_name"],
        },
        {"GPU memory (MB)": "peak_memory_mb", "Peak RSS (MB)": "peak_rss_mb"},
        [*TABLE3_COLUMNS, "Label", "Budget", "Peak RSS (MB)", "n", "Seeds", "Run"],
        compared={"GPU memory (MB)": "peak_memory_mb"},
    )


def _fmt(value, decimals: int) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.{decimals}f}"
    return str(value)


def _cell(row: pd.Series, col: str, digits: int) -> str:
    """``mean``, or ``mean ± std (n=k)`` for a configuration with several seeds."""
    cell = _fmt(row[col], digits)
    n = row.get(f"{col} (n)")
    if cell and pd.notna(n) and n > 1 and pd.notna(row.get(f"{col} (std)")):
        cell += f" ± {row[f'{col} (std)']:.{digits}f} (n={int(n)})"
    return cell


def to_markdown(table: pd.DataFrame, decimals: int = 4) -> str:
    """Markdown with one cell per study column: ``ours (study X, diff +Y)`` where matched, ours
    being ``mean ± std (n=k)`` over seeds (a configuration of one run shows its value alone)."""
    if table.empty:
        return "_No completed runs._\n"
    metric_cols = [c[: -len(" (study)")] for c in table.columns if c.endswith(" (study)")]
    several = "n" in table.columns and (pd.to_numeric(table["n"], errors="coerce") > 1).any()
    hidden = {"Run", "n"} | (set() if several else {"Seeds"})
    shown = [c for c in table.columns if not c.endswith(DERIVED_SUFFIXES) and c not in hidden]
    lines = ["| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown)]
    for _, row in table.iterrows():
        cells = []
        for col in shown:
            digits = 1 if "time" in col.lower() or "MB" in col else 3 if "PPL" in col else decimals
            cell = _cell(row, col, digits)
            if col in metric_cols and pd.notna(row[f"{col} (study)"]):
                study = _fmt(row[f"{col} (study)"], digits)
                cell = cell or "n/a"
                diff = row[f"{col} (diff)"]
                ref2 = row.get(f"{col} (ref2)")
                more = f"; {SECOND_REFERENCE} {_fmt(ref2, digits)}" if ref2 is not None and pd.notna(ref2) else ""
                cell += (
                    f" (study {study}, diff {diff:+.{digits}f}{more})" if pd.notna(diff) else f" (study {study}{more})"
                )
            cells.append(cell.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def all_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"table1": table1(runs), "table2": table2(runs), "table3": table3(runs)}
