"""Checking, printing and flattening the composed Hydra config.

``validate`` runs before any data is loaded or model built, and turns a bad value into one
readable line naming the setting, the value and what is allowed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from datamodules.augment import POLICIES as AUGMENT_POLICIES
from datamodules.tokenizers import TOKENIZERS
from lightning_modules.nets.attention import IMPLEMENTATIONS
from lightning_modules.nets.vit import NORMS
from lmvit.errors import ConfigError


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _one_of(choices: tuple[str, ...]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices, "one of " + ", ".join(choices))


def _fraction_or_count(v: Any) -> bool:
    """Lightning's limit_*_batches: a fraction in [0, 1] or a whole number of batches."""
    return _is_int(v) and v >= 0 or isinstance(v, float) and 0.0 <= v <= 1.0


def _is_pair(v: Any, ok: Callable[[Any], bool]) -> bool:
    return isinstance(v, (ListConfig, list, tuple)) and len(v) == 2 and all(ok(b) for b in v)


def _is_betas(v: Any) -> bool:
    return _is_pair(v, lambda b: _is_number(b) and 0 <= b < 1)


def _is_eps(v: Any) -> bool:  # a number, or Adafactor's pair (eps1 or null, eps2)
    return _is_number(v) and v > 0 or _is_pair(v, lambda b: b is None or _is_number(b) and b > 0)


POSITIVE_INT = (lambda v: _is_int(v) and v >= 1, "an integer >= 1")
NON_NEGATIVE_INT = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
FRACTION = (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")  # rates, dropout, warm-up


# torch.compile's modes (model.compile_mode; null: torch's default)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# setting -> (test, what is allowed); a setting absent from the config is not checked
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "optimizer.lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "optimizer.weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "optimizer.momentum": FRACTION,
    "optimizer.lr_scale": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "optimizer.betas": (_is_betas, "two numbers in [0, 1), e.g. [0.9,0.999]"),
    "optimizer.eps": (_is_eps, "a number > 0 (Adafactor: a pair [null or a number > 0, a number > 0])"),
    "optimizer.warmup_steps": NON_NEGATIVE_INT,
    "optimizer.ns_steps": POSITIVE_INT,
    "optimizer.adjust_lr_fn": (lambda v: v in ("original", "match_rms_adamw"), "original or match_rms_adamw"),
    "optimizer.precondition_frequency": POSITIVE_INT,
    "model.no_weight_decay": (lambda v: isinstance(v, bool), "true or false"),
    "model.num_layers": POSITIVE_INT,
    "model.num_heads": POSITIVE_INT,
    "model.embed_dim": POSITIVE_INT,
    "model.hidden_dim": POSITIVE_INT,
    "model.patch_size": POSITIVE_INT,
    "model.dropout": FRACTION,
    "model.attn_dropout": FRACTION,
    "model.drop_path": FRACTION,
    "model.norm": _one_of(NORMS),
    "model.attention": _one_of(IMPLEMENTATIONS),
    "model.label_smoothing": FRACTION,
    "model.embedding_dropout": FRACTION,
    "model.output_dropout": FRACTION,
    "data.augment": (lambda v: v in AUGMENT_POLICIES, "null or one of " + ", ".join(AUGMENT_POLICIES)),  # noqa: E501
    "data.random_erasing": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "data.mixup": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (a Beta alpha; 0 = off)"),
    "data.cutmix": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (a Beta alpha; 0 = off)"),
    "callbacks.ema.decay": (lambda v: _is_number(v) and 0 < v < 1, "null (off) or a number in (0, 1)"),
    "model.embedding_size": POSITIVE_INT,
    "model.hidden_size": POSITIVE_INT,
    "data.batch_size": POSITIVE_INT,
    "data.num_workers": NON_NEGATIVE_INT,
    "data.val_size": POSITIVE_INT,
    "data.seq_len": POSITIVE_INT,
    "data.tokenizer": _one_of(TOKENIZERS),
    "data.train_subset": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (or null for all images)"),
    "scheduler.warmup_fraction": FRACTION,
    "scheduler.min_lr_ratio": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "trainer.max_epochs": POSITIVE_INT,
    "trainer.gradient_clip_val": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (or null)"),
    "trainer.limit_train_batches": (_fraction_or_count, "a fraction in [0, 1] or a number of batches"),
    "trainer.limit_val_batches": (_fraction_or_count, "a fraction in [0, 1] or a number of batches"),
    "trainer.limit_test_batches": (_fraction_or_count, "a fraction in [0, 1] or a number of batches"),
    "callbacks.periodic_checkpoint.every_n_train_steps": POSITIVE_INT,
    "callbacks.finite_loss.check_every_n_steps": POSITIVE_INT,
    # inspection callbacks (lightning_modules/callbacks/inspection.py, text_samples.py)
    "callbacks.attention_inspection.every_n_epochs": POSITIVE_INT,
    "callbacks.attention_inspection.num_images": POSITIVE_INT,
    "callbacks.class_inspection.every_n_epochs": POSITIVE_INT,
    "callbacks.class_inspection.num_misclassified": NON_NEGATIVE_INT,
    "callbacks.text_samples.every_n_epochs": POSITIVE_INT,
    "callbacks.text_samples.max_tokens": NON_NEGATIVE_INT,
    "callbacks.text_samples.temperature": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (0: greedy)"),
    "callbacks.text_samples.top_k": (lambda v: _is_int(v) and v >= 1, "an integer >= 1, or null for all tokens"),
    "callbacks.dynamics.every_n_steps": POSITIVE_INT,
    "model.compile_mode": _one_of(COMPILE_MODES),
}

# settings naming a file or folder that must exist (null: not used)
FILES = ("model.embeddings_path",)
FOLDERS = ("data.tokenizer_dir",)

CIFAR10_TRAIN_IMAGES = 50_000
# options of the CPU (per-image) augmentation path that data.device_augment=true refuses
PER_IMAGE_ONLY = {"data.augment": lambda v: bool(v)}


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(
        f"Invalid setting {key}={value!r}: must be {allowed}. Fix it on the command line (e.g. {key}=...) or in conf/."
    )


def validate(cfg: DictConfig, reference: DictConfig | None = None) -> None:
    """Raise :class:`ConfigError` for the first bad value; cheap, touches no data.

    ``reference``, the default config of the same groups (no value overrides), adds a type check of
    every setting: a word where the default is a number (or a flag), a fraction where it is an
    integer, is refused whatever the setting."""
    if reference is not None:
        check_types(cfg, reference)
    for key, (ok, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not ok(value):
            _fail(key, value, allowed)

    _check_optimizer_package(cfg)
    model = cfg.get("model") or {}
    if "embed_dim" in model and "num_heads" in model and model.embed_dim % model.num_heads:
        _fail("model.embed_dim", model.embed_dim, f"divisible by model.num_heads={model.num_heads}")
    if "image_size" in model and "patch_size" in model and model.image_size % model.patch_size:
        _fail("model.patch_size", model.patch_size, f"a divisor of model.image_size={model.image_size}")

    for key, is_ok, kind in [(k, Path.is_file, "file") for k in FILES] + [(k, Path.is_dir, "folder") for k in FOLDERS]:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not is_ok(Path(str(value)).expanduser()):
            raise ConfigError(
                f"Invalid setting {key}={str(value)!r}: no such {kind} ({Path(str(value)).expanduser().resolve()}). "
                f"Point {key} at an existing {kind}, or set {key}=null."
            )

    for name, logger in (cfg.get("logger") or {}).items():
        package = {"WandbLogger": "wandb"}.get(str((logger or {}).get("_target_", "")).rsplit(".", 1)[-1])
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"Invalid setting logger={name}: the {package} package is not installed. Install the "
                f"optional extra (pip install -e '.[{package}]') or choose another logger (logger=tensorboard)."
            )

    data = cfg.get("data") or {}
    target = str(data.get("_target_", ""))
    if target.endswith("CIFAR10DataModule") and data.get("val_size", 0) >= CIFAR10_TRAIN_IMAGES:
        _fail("data.val_size", data.val_size, f"smaller than the {CIFAR10_TRAIN_IMAGES} training images")
    if data.get("device_augment"):
        for key, on in PER_IMAGE_ONLY.items():
            value = OmegaConf.select(cfg, key, default=None)
            if value is not None and on(value):
                raise ConfigError(
                    f"{key}={value!r} is not supported with data.device_augment=true (it runs image by "
                    f"image in the CPU loader): set data.device_augment=false or drop {key}."
                )
    if "data_dir" in data:
        path = Path(str(data.data_dir)).expanduser()
        if not path.is_dir():
            raise ConfigError(
                f"Invalid setting data.data_dir={str(data.data_dir)!r}: directory {path.resolve()} "
                "does not exist. Create it (missing datasets are downloaded into it) or point "
                "data.data_dir / the DATA_DIR environment variable at your data folder."
            )


def _type_name(value: Any) -> str | None:
    """The kind of value a setting holds, as far as a command line can get it wrong."""
    if isinstance(value, bool):
        return "bool"
    if _is_int(value):
        return "int"
    if isinstance(value, float):
        return "float"
    return None  # strings, null, lists, mappings: anything goes


# settings whose default is a number or flag but which also take words (Lightning's devices="auto",
# deterministic="warn"; model.compile=<backend>): left to their own checks
TYPE_CHECK_EXEMPT = ("trainer.devices", "trainer.deterministic", "trainer.precision", "model.compile")
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
        if expected is None or node is None or prefix[:-1] in TYPE_CHECK_EXEMPT:
            return
        if _type_name(node) not in ALLOWED_FOR[expected]:
            _fail(prefix[:-1], node, TYPE_WORDS[expected])

    walk(cfg, reference, "")


def _check_optimizer_package(cfg: DictConfig) -> None:
    """A third-party optimizer (conf/optimizer/lion.yaml, ...) whose package is missing: one line
    naming the extra to install, before anything is built."""
    from lightning_modules.optim import INSTALL_HINT, OPTIONAL_PACKAGES

    target = str(OmegaConf.select(cfg, "optimizer._target_", default="") or "")
    module = target.split(".")[0]
    if module in OPTIONAL_PACKAGES and importlib.util.find_spec(module) is None:
        choice = target.rsplit(".", 1)[-1]
        raise ConfigError(
            f"Optimizer {choice} ({target}) needs the package {OPTIONAL_PACKAGES[module]}, which is not "
            f"installed: {INSTALL_HINT} (the optim extra), or pick another optimizer=..."
        )


@rank_zero_only
def print_config(cfg: DictConfig, save_to: Path | None = None) -> None:
    """Print the resolved config as a tree (one branch per group) and save it as YAML."""
    tree = rich.tree.Tree("config", style="bold")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key), style="bold").add(rich.syntax.Syntax(text.rstrip(), "yaml"))
    rich.print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        save_to.write_text(OmegaConf.to_yaml(cfg, resolve=True))


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """Resolved config as {"model.num_layers": 2, ...} with scalar values (for HParams)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(node, (int, float, str, bool)) or node is None:
            flat[prefix] = "null" if node is None else node
        else:
            flat[prefix] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


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
}
HPARAM_GROUPS = ("task", "experiment", "study_config", "budget", "model", "optimizer", "scheduler", "data", "trainer")
# settings that do not change what is learnt (where files go, how fast data loads, how often to log)
NOT_HPARAMS = (
    "embeddings_path",
    "_target_",
    "data_dir",
    "cache_dir",
    "tokenizer_dir",
    "folder",
    "num_workers",
    "pin_memory",
    "download",
    "download_timeout",
    "default_root_dir",
    "log_every_n_steps",
    "enable_",
    "num_sanity_val_steps",
    "limit_",
    "check_val_every_n_epoch",
    "val_check_interval",
)


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
    if isinstance(flat.get("optimizer.lr_scale"), (int, float)) and isinstance(out["lr"], (int, float)):
        out["lr"] = out["lr"] * flat["optimizer.lr_scale"]  # the lr the optimizer uses (conf/optimizer/*.yaml)
    out["experiment"] = choices.get("experiment") or "null"
    shown = {k for k in HPARAM_COLUMNS.values() if k}
    for key, value in flat.items():
        leaf = key.rsplit(".", 1)[-1]
        if (
            key.split(".")[0] in HPARAM_GROUPS
            and key not in shown
            and not any(leaf.startswith(x) or leaf == x for x in NOT_HPARAMS)
        ):
            out[key] = value
    return out
