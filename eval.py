"""Evaluate a trained run's checkpoint on its validation or test split, or on other data.

    python eval.py run=logs/vit/runs/<date_time>                      # best checkpoint, test split
    python eval.py run=logs/vit/runs/<date_time> ckpt=last split=val
    python eval.py run=logs/lstm/runs/<date_time> data.test_file=/path/to/other.tokens
    python eval.py run=logs/multiruns/<date_time>                 # every completed run: one CSV

The run's saved ``config.yaml`` gives the model and the data (``data.*`` / ``trainer.*`` overrides
change them for this evaluation only). One run prints a table and writes
``<run>/eval/<ckpt>-<split>.json`` (atomically; ``metrics.json`` is never touched); a folder of runs
also writes ``<folder>/eval-<ckpt>-<split>.csv``. An earlier evaluation is kept: the next one is
written beside it (``<ckpt>-<split>-2.json``, ...) unless ``overwrite=true``. The ``data.*`` and
``trainer.*`` overrides are checked as ``train.py`` checks them (``lmvit.config.validate``).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmvit.cli import ErrorPolicy, quiet_libraries
from lmvit.config import validate
from lmvit.errors import ConfigError, UserError
from lmvit.io import atomic_write_json, atomic_write_text
from lmvit.runs import (
    check_checkpoint,
    checkpoint,
    checkpoint_name,
    completed_runs,
    format_table,
    is_run,
    load_metrics,
    load_model,
    run_config,
    run_dir,
)

log = logging.getLogger("eval")
SPLITS = ("val", "test")


# the parts of a run's config an evaluation uses, checked by validate() with the overrides merged in
EVAL_SECTIONS = ["task", "model", "data", "trainer"]


def evaluate_run(
    run: str | Path,
    ckpt: str = "best",
    split: str = "test",
    data: dict[str, Any] | None = None,
    trainer: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate one run's checkpoint on ``split``; writes ``<run>/eval/<ckpt>-<split>.json`` (or, when
    an earlier evaluation is there and not ``overwrite``, ``<ckpt>-<split>-2.json``, ...) and returns
    its content. ``run``: a run directory (``str`` or ``Path``)."""
    run = run_dir(run)
    if split not in SPLITS:
        raise ConfigError(f"Invalid setting split={split!r}: must be one of {', '.join(SPLITS)}.")
    saved = run_config(run)
    _check_keys(saved, "data", data)
    _check_keys(saved, "trainer", trainer)
    cfg = run_config(run, data=data, trainer=trainer)
    validate(OmegaConf.masked_copy(cfg, EVAL_SECTIONS), reference=OmegaConf.masked_copy(saved, EVAL_SECTIONS))
    path = checkpoint(run, ckpt)
    check_checkpoint(path, lambda other: f"python eval.py run={run} ckpt={other}")
    model = load_model(cfg, path)
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    saved = cfg.get("trainer") or {}
    limit = f"limit_{split}_batches"
    evaluator = pl.Trainer(
        accelerator=saved.get("accelerator", "auto"),
        devices=1,
        precision=saved.get("precision", "32-true"),
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=bool(saved.get("deterministic", False)),
        **{limit: saved.get(limit, 1.0)},
    )
    run_split = evaluator.test if split == "test" else evaluator.validate
    start = time.perf_counter()
    (results,) = run_split(model, datamodule=datamodule, verbose=False)
    result = {
        "run": str(run),
        "task": cfg.get("task"),
        "checkpoint": str(path),
        "ckpt": ckpt,
        "split": split,
        "metrics": {k: float(v) for k, v in sorted(results.items())},
        "data": {k: v for k, v in (data or {}).items() if v is not None},
        "trainer": {k: v for k, v in (trainer or {}).items() if v is not None},
        "seconds": round(time.perf_counter() - start, 3),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = output_path(run / "eval" / f"{checkpoint_name(ckpt)}-{split}.json", overwrite)
    atomic_write_json(out, result)
    log.info("Wrote %s", out)
    return result


def output_path(path: Path, overwrite: bool = False) -> Path:
    """``path``, or when an earlier evaluation holds it (and not ``overwrite``) the first free
    ``<stem>-2<suffix>``, ``<stem>-3<suffix>``, ... beside it: evaluations are kept."""
    if overwrite or not path.exists():
        return path
    n = 2
    while path.with_name(f"{path.stem}-{n}{path.suffix}").exists():
        n += 1
    log.info("Keeping the earlier %s (overwrite=true replaces it)", path.name)
    return path.with_name(f"{path.stem}-{n}{path.suffix}")


def _check_keys(cfg: DictConfig, section: str, values: dict[str, Any] | None) -> None:
    """An override of a key the run's ``data`` (or ``trainer``) config lacks is a clear error."""
    known = set((cfg.get(section) or {}).keys())
    for key, value in (values or {}).items():
        if value is not None and key not in known:
            target = (cfg.get(section) or {}).get("_target_", section)
            raise ConfigError(
                f"Invalid setting {section}.{key}={value!r}: this run's {section} ({target}) has no setting "
                f"{key!r}; its settings are: {', '.join(sorted(k for k in known if k != '_target_'))}."
            )


def evaluate(cfg: DictConfig) -> list[dict[str, Any]]:
    """``eval.py``'s work: one run, or every completed run below a folder (then one CSV)."""
    if OmegaConf.is_missing(cfg, "run"):
        raise ConfigError(
            "Missing setting run: pass a run directory (or a sweep folder), e.g. "
            "python eval.py run=logs/vit/runs/<date_time>"
        )
    target = Path(str(cfg.run)).expanduser().resolve()
    if not target.exists():
        raise ConfigError(f"Invalid setting run={cfg.run!r}: {target} does not exist.")
    data = OmegaConf.to_container(cfg.get("data") or {}, resolve=True)
    trainer = OmegaConf.to_container(cfg.get("trainer") or {}, resolve=True)
    if is_run(target) or (target / "config.yaml").is_file():
        result = evaluate_run(target, cfg.ckpt, cfg.split, data, trainer, overwrite=cfg.overwrite)
        print(format_table([{"metric": k, "value": v} for k, v in result["metrics"].items()], ["metric", "value"]))
        print(f"(run {target}, checkpoint {Path(result['checkpoint']).name}, split {cfg.split})")
        return [result]
    runs = completed_runs(target)
    if not runs:
        raise UserError(
            f"No completed run in {target}: pass a run directory made by train.py (it holds config.yaml "
            'and checkpoints/) or a folder of them whose metrics.json say "completed".'
        )
    results, rows = [], []
    for run in runs:
        log.info("Evaluating %s", run)
        result = evaluate_run(run, cfg.ckpt, cfg.split, data, trainer, overwrite=cfg.overwrite)
        results.append(result)
        experiment = load_metrics(run).get("experiment") or {}
        rows.append(
            {
                "run": str(run.relative_to(target)),
                "label": experiment.get("label"),
                "task": result["task"],
                **result["metrics"],
            }
        )
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    out = output_path(target / f"eval-{checkpoint_name(cfg.ckpt)}-{cfg.split}.csv", cfg.overwrite)
    atomic_write_text(out, buffer.getvalue())
    print(format_table(rows, columns))
    print(f"({len(rows)} runs, checkpoint {cfg.ckpt}, split {cfg.split}; written to {out})")
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with ErrorPolicy():
        evaluate(cfg)


if __name__ == "__main__":
    quiet_libraries()
    main()
