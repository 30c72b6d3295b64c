"""Checking, printing and flattening the composed Hydra config.

``validate`` runs before any data is loaded or model built, and turns a bad value into one
readable line naming the setting, the value and what is allowed. The rules of a setting live in the
class that owns it (``check_settings``; lmvit/settings.py); this module imports none of those
classes, it finds them through the config's ``_target_``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from lmvit import runs
from lmvit.errors import ConfigError
from lmvit.settings import POSITIVE_INT, Rule, invalid, is_int

# Every setting of a class of ours is checked by that class (``check_settings``, found through the
# group's ``_target_``; see lmvit/settings.py). Here: the settings of Lightning's own classes,
# which no class of ours owns, the type check against the default config and the checks that span
# config groups.


def _fraction_or_count(v: Any) -> bool:
    """Lightning's limit_*_batches: a fraction in [0, 1] or a whole number of batches."""
    return is_int(v) and v >= 0 or isinstance(v, float) and 0.0 <= v <= 1.0


LIGHTNING_RULES: dict[str, Rule] = {
    "trainer.max_epochs": POSITIVE_INT,
    "trainer.gradient_clip_val": (lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0 (or null)"),
    "trainer.limit_train_batches": (_fraction_or_count, "a fraction in [0, 1] or a number of batches"),
    "trainer.limit_val_batches": (_fraction_or_count, "a fraction in [0, 1] or a number of batches"),
    "trainer.limit_test_batches": (_fraction_or_count, "a fraction in [0, 1] or a number of batches"),
    "callbacks.periodic_checkpoint.every_n_train_steps": POSITIVE_INT,
}


def _fail(key: str, value: Any, allowed: str) -> None:
    raise invalid(key, value, allowed)


def owner(node: Any, key: str) -> Any:
    """The class (or function) a config group's ``_target_`` names; None without one."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        return None
    from hydra.utils import get_object

    try:
        return get_object(str(target))
    except Exception as err:  # a typo in _target_, or a package that is not installed
        raise ConfigError(f"Invalid setting {key}._target_={str(target)!r}: cannot import it ({err}).") from err


def check_owned(cfg: DictConfig) -> None:
    """Each group's settings by the class that owns them: ``data``, ``model`` (with its net, its
    optimizer and schedule) and every callback, through their ``check_settings``."""
    groups = [("model", cfg.get("model"))]
    groups += [(f"callbacks.{name}", node) for name, node in (cfg.get("callbacks") or {}).items()]
    groups += [("data", cfg.get("data"))]  # last: its folders' existence after every value's rule
    for key, node in groups:
        check = getattr(owner(node, key), "check_settings", None)
        if callable(check):
            check(node, f"{key}.")


def validate(cfg: DictConfig, reference: DictConfig | None = None) -> None:
    """Raise :class:`ConfigError` for the first bad value; cheap, touches no data.

    ``reference``, the default config of the same groups (no value overrides), adds a type check of
    every setting: a word where the default is a number (or a flag), a fraction where it is an
    integer, is refused whatever the setting."""
    if reference is not None:
        check_types(cfg, reference)
    for key, (ok, allowed) in LIGHTNING_RULES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not ok(value):
            _fail(key, value, allowed)
    check_owned(cfg)
    check_model_fits_data(cfg)

    for name, logger in (cfg.get("logger") or {}).items():
        package = {"WandbLogger": "wandb"}.get(str((logger or {}).get("_target_", "")).rsplit(".", 1)[-1])
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"Invalid setting logger={name}: the {package} package is not installed. Install the "
                f"optional extra (pip install -e '.[{package}]') or choose another logger (logger=tensorboard)."
            )


def check_model_fits_data(cfg: DictConfig) -> None:
    """The model and the data module read the same kind of batch (their classes' ``BATCH``)."""
    model, data = cfg.get("model"), cfg.get("data")
    wants = getattr(owner(model, "model"), "BATCH", None)
    gives = getattr(owner(data, "data"), "BATCH", None)
    if wants and gives and wants != gives:
        raise ConfigError(
            f"model={model._target_.rsplit('.', 1)[-1]} reads batches of {wants} but "
            f"data={data._target_.rsplit('.', 1)[-1]} gives {gives}: pick the data module of the model's "
            "task (model=vit with data=cifar10; model=lstm with data=wikitext2 or wikitext2_offline)."
        )


def _type_name(value: Any) -> str | None:
    """The kind of value a setting holds, as far as a command line can get it wrong."""
    if isinstance(value, bool):
        return "bool"
    if is_int(value):
        return "int"
    if isinstance(value, float):
        return "float"
    return None  # strings, null, lists, mappings: anything goes


# settings whose default is a number or flag but which also take words (Lightning's devices="auto",
# deterministic="warn"; model.compile=<backend>): left to their own checks
TYPE_CHECK_EXEMPT = ("trainer.devices", "trainer.deterministic", "trainer.precision", "model.compile")
# settings a count or a fraction (limit_*_batches): their rule in LIGHTNING_RULES decides, not the
# type of the default (a debug run's count must not refuse eval.py's trainer.limit_test_batches=1.0)
EITHER_TYPE = tuple(key for key, (rule, _) in LIGHTNING_RULES.items() if rule is _fraction_or_count)
ALLOWED_FOR = {"bool": ("bool",), "int": ("int",), "float": ("float", "int")}
TYPE_WORDS = {"bool": "true or false", "int": "an integer", "float": "a number"}


def check_types(cfg: DictConfig, reference: DictConfig) -> None:
    """Every setting whose default is a number or a flag still holds one (``trainer.max_epochs=ten``
    and ``model.num_layers=2.5`` fail here, with one line, before anything is built)."""

    def walk(node: Any, ref: Any, prefix: str) -> None:
        if isinstance(ref, DictConfig) and isinstance(node, DictConfig):
            for key in ref.keys():
                skip = (
                    key not in node
                    or OmegaConf.is_missing(ref, key)
                    or OmegaConf.is_missing(node, key)
                    or OmegaConf.is_interpolation(ref, key)
                )  # interpolations follow their source
                if not skip:
                    walk(node[key], ref[key], f"{prefix}{key}.")
            return
        if isinstance(ref, (DictConfig, ListConfig)):
            return
        expected = _type_name(ref)
        key = prefix[:-1]
        if expected is None or node is None or key in TYPE_CHECK_EXEMPT or key in EITHER_TYPE:
            return
        if _type_name(node) not in ALLOWED_FOR[expected]:
            _fail(key, node, TYPE_WORDS[expected])

    walk(cfg, reference, "")


@rank_zero_only
def print_config(cfg: DictConfig, save_to: Path | None = None, tree: bool = False) -> None:
    """Save the resolved config as YAML and say where in one line (``tree=True``: print it as a tree,
    one branch per group; ``python train.py <overrides> --cfg job --resolve`` prints it without
    running)."""
    if tree:
        view = rich.tree.Tree("config", style="bold")
        for key, value in cfg.items():
            text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
            view.add(str(key), style="bold").add(rich.syntax.Syntax(text.rstrip(), "yaml"))
        rich.print(view)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        save_to.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        print(f"Config: {save_to} (without running: python train.py <overrides> --cfg job --resolve)")


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """Resolved config as {"model.num_layers": 2, ...} with scalar values (for HParams)."""
    flat = runs.flatten(OmegaConf.to_container(cfg, resolve=True))
    return {
        k: "null" if v is None else v if isinstance(v, (int, float, str, bool)) else str(v)
        for k, v in flat.items()
        if v != {}  # an empty section has no setting
    }


def reference_config(task_overrides: list[str], choices: dict[str, Any]) -> DictConfig | None:
    """The default config of this run's config groups (its ``key=value`` overrides left out), for
    :func:`check_types`. Call inside a Hydra app (it composes with the app's search path)."""
    from hydra import compose

    groups = {key.split("@")[0] for key in choices}
    keep = [o for o in task_overrides if o.lstrip("+~").split("=")[0].split("@")[0] in groups]
    if len(keep) == len(task_overrides):  # group choices only: the run's config is the reference, nothing
        return None  # to check (and one composition, ~0.5 s of start-up, saved)
    try:
        return compose(config_name="train", overrides=keep)
    except Exception:  # composing never blocks a run: the type check is then skipped
        return None


# HParams columns a researcher compares, first (short names), then the rest of what shapes a run
HPARAM_COLUMNS = {
    "optimizer": None,  # the optimizer config's name (adam, adamw, sgd, momentum, ...)
    "lr": "optimizer.lr",  # times optimizer.lr_scale where the optimizer config has one
    "weight_decay": "optimizer.weight_decay",
    "layers": "model.num_layers",
    "norm": "model.norm",
    "seed": "seed",
    "label": "label",
    "study_config": "study_config",
}
HPARAM_GROUPS = ("task", "experiment", "study_config", "budget", "model", "optimizer", "scheduler", "data", "trainer")


def run_hparams(cfg: DictConfig, choices: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's hyperparameters for TensorBoard's HParams tab: the compared columns first
    (:data:`HPARAM_COLUMNS`), then model, optimizer, schedule, data and trainer settings; no paths,
    callbacks, loggers or Hydra settings (they are in ``config.yaml``)."""
    choices = choices or {}
    flat = flatten(cfg)
    out: dict[str, Any] = {}
    for column, key in HPARAM_COLUMNS.items():
        if key is None:
            value = choices.get("optimizer") or str(flat.get("optimizer._target_", "null")).rsplit(".", 1)[-1]
        else:
            value = flat.get(key, "null")
        out[column] = value
    lr = runs.effective_lr(OmegaConf.to_container(cfg, resolve=True))  # the lr the optimizer uses
    if lr is not None:
        out["lr"] = lr
    out["experiment"] = choices.get("experiment") or "null"
    shown = {k for k in HPARAM_COLUMNS.values() if k}
    for key, value in flat.items():
        leaf = key.rsplit(".", 1)[-1]
        if (
            key.split(".")[0] in HPARAM_GROUPS
            and key not in shown
            and runs.is_configuration(key)
            and leaf not in ("_target_", "embeddings_path")  # a class and a file: in config.yaml
        ):
            out[key] = value
    return out
