"""Checking, printing and flattening the composed Hydra config.

``validate`` runs before any data is loaded or model built, and turns a bad value into one
readable line naming the setting, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only


from lmvit.errors import ConfigError  # noqa: F401  (re-exported: lmvit.config.ConfigError)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# setting -> (test, what is allowed); a setting absent from the config is not checked
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "optimizer.lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "optimizer.weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "optimizer.momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "model.num_layers": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "model.num_heads": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "model.embed_dim": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "model.hidden_dim": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "model.patch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "model.dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "model.attn_dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "model.drop_path": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "model.norm": (lambda v: v in ("pre", "post"), "pre or post"),
    "model.attention": (lambda v: v in ("explicit", "sdpa"), "explicit or sdpa"),
    "model.embedding_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "model.hidden_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "data.batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "data.num_workers": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "data.val_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "data.seq_len": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "data.tokenizer": (lambda v: v in ("word", "gpt2", "npz"), "word, gpt2 or npz"),
    "trainer.max_epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "callbacks.dynamics.every_n_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
}

CIFAR10_TRAIN_IMAGES = 50_000


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(
        f"Invalid setting {key}={value!r}: must be {allowed}. Fix it on the command line "
        f"(e.g. {key}=...) or in conf/."
    )


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first bad value; cheap, touches no data."""
    for key, (ok, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not ok(value):
            _fail(key, value, allowed)

    model = cfg.get("model") or {}
    if "embed_dim" in model and "num_heads" in model and model.embed_dim % model.num_heads:
        _fail("model.embed_dim", model.embed_dim, f"divisible by model.num_heads={model.num_heads}")
    if "image_size" in model and "patch_size" in model and model.image_size % model.patch_size:
        _fail("model.patch_size", model.patch_size, f"a divisor of model.image_size={model.image_size}")

    data = cfg.get("data") or {}
    target = str(data.get("_target_", ""))
    if target.endswith("CIFAR10DataModule") and data.get("val_size", 0) >= CIFAR10_TRAIN_IMAGES:
        _fail("data.val_size", data.val_size, f"smaller than the {CIFAR10_TRAIN_IMAGES} training images")
    if "data_dir" in data:
        path = Path(str(data.data_dir)).expanduser()
        if not path.is_dir():
            raise ConfigError(
                f"Invalid setting data.data_dir={str(data.data_dir)!r}: directory {path.resolve()} "
                "does not exist. Create it (missing datasets are downloaded into it) or point "
                "data.data_dir / the DATA_DIR environment variable at your data folder."
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
