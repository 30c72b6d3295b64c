"""Optimizers from config: parameter groups, learning-rate scale, Muon's split, train/eval modes.

One place decides which parameter goes where; :meth:`StudyModule.configure_optimizers` calls
:func:`build_optimizer` with the Hydra partial of ``conf/optimizer/<name>.yaml`` and the net.

- **Weight-decay groups** (``model.no_weight_decay=true``): norms, biases (every parameter with
  fewer than 2 dimensions) and the parameters a net names in ``no_weight_decay()`` (the ViT's
  [cls] token and positional embedding, as in timm) get weight decay 0; the rest keeps the
  optimizer's. Off by default: the study decays every parameter.
- **lr_scale**: the optimizer configs beyond the study's four carry ``lr_scale``; the optimizer
  gets ``lr = optimizer.lr * lr_scale``. ``optimizer.lr`` stays the model's (AdamW-equivalent)
  learning rate (3e-4 for the ViT, 1e-3 for the LSTM), so one lr grid serves every optimizer and
  each optimizer's default sits where its authors put it relative to AdamW.
- **Muon** (:class:`MuonAdamW`): one optimizer holding two: ``torch.optim.Muon`` for the net's
  2-D hidden weight matrices and ``torch.optim.AdamW`` for everything else (embeddings, the
  [cls] token, positional embedding, norms, biases, the input and output layers a net names in
  ``input_output_modules``), stepped together, saved and restored as one state dict, scheduled
  together (its ``param_groups`` are both optimizers' groups).
- **Schedule-Free** optimizers have ``train()``/``eval()`` modes (the parameters hold a different
  point in each); :func:`has_modes`, :func:`set_mode` and :func:`eval_mode` drive them
  (see ``lightning_modules/callbacks/optimizer_mode.py``).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lmvit.errors import ConfigError
from lmvit.settings import (
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    Rule,
    check_rules,
    is_number,
)

# third-party optimizer packages -> the distribution to install (all in the `optim` extra)
OPTIONAL_PACKAGES = {
    "lion_pytorch": "lion-pytorch",
    "schedulefree": "schedulefree",
    "pytorch_optimizer": "pytorch-optimizer",
}
INSTALL_HINT = "pip install -e '.[optim]'"


def _is_pair(v: Any, ok: Callable[[Any], bool]) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2 and all(ok(b) for b in v)


# the settings of conf/optimizer/*.yaml (absent ones are not checked); an optimizer's own other
# arguments are checked by the optimizer when it is built
SETTINGS: dict[str, Rule] = {
    "lr": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "momentum": FRACTION,
    "lr_scale": POSITIVE,
    "betas": (lambda v: _is_pair(v, lambda b: is_number(b) and 0 <= b < 1), "two numbers in [0, 1), e.g. [0.9,0.999]"),
    "eps": (  # a number, or Adafactor's pair (eps1 or null, eps2)
        lambda v: is_number(v) and v > 0 or _is_pair(v, lambda b: b is None or is_number(b) and b > 0),
        "a number > 0 (Adafactor: a pair [null or a number > 0, a number > 0])",
    ),
    "warmup_steps": NON_NEGATIVE_INT,
    "ns_steps": POSITIVE_INT,
    "adjust_lr_fn": (lambda v: v in ("original", "match_rms_adamw"), "original or match_rms_adamw"),
    "precondition_frequency": POSITIVE_INT,
}


def check_optimizer(optimizer: Any, prefix: str = "optimizer.") -> None:
    """The optimizer's settings (a config with ``_target_`` or a ``functools.partial``) and, for a
    third-party optimizer, that its package is installed (one line naming the extra)."""
    if isinstance(optimizer, functools.partial):
        check_rules(optimizer.keywords, SETTINGS, prefix)
        return
    if not isinstance(optimizer, Mapping):
        return
    check_rules(optimizer, SETTINGS, prefix)
    target = str(optimizer.get("_target_") or "")
    module = target.split(".")[0]
    if module in OPTIONAL_PACKAGES and importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"Optimizer {target.rsplit('.', 1)[-1]} ({target}) needs the package {OPTIONAL_PACKAGES[module]}, "
            f"which is not installed: {INSTALL_HINT} (the optim extra), or pick another optimizer=..."
        )


def _decays(name: str, param: nn.Parameter, no_decay_names: set[str]) -> bool:
    return param.ndim >= 2 and not name.endswith(".bias") and name not in no_decay_names


def _is_hidden_matrix(name: str, param: nn.Parameter, io_modules: tuple[str, ...]) -> bool:
    """A 2-D weight inside the net (not an input/output layer named by the net): Muon's domain."""
    if param.ndim != 2:
        return False
    return not any(name == m or name.startswith(m + ".") for m in io_modules)


def param_groups(
    net: nn.Module, no_weight_decay: bool = False, split_hidden_matrices: bool = False
) -> list[dict[str, Any]]:
    """The trainable parameters of ``net`` in groups, each parameter exactly once (tied ones once).

    With ``no_weight_decay`` the parameters that should not decay get a group with
    ``weight_decay=0.0``; with ``split_hidden_matrices`` every group carries ``use_muon`` (True for
    2-D hidden weight matrices). Empty groups are left out.
    """
    no_decay_names = set(net.no_weight_decay()) if hasattr(net, "no_weight_decay") else set()
    io_modules = tuple(getattr(net, "input_output_modules", ()))
    embeddings = {f"{n}.weight" for n, m in net.named_modules() if isinstance(m, nn.Embedding)}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in net.named_parameters():  # tied parameters are listed once
        if not param.requires_grad:
            continue
        muon = split_hidden_matrices and name not in embeddings and _is_hidden_matrix(name, param, io_modules)
        decay = not no_weight_decay or _decays(name, param, no_decay_names)
        groups.setdefault((muon, decay), []).append(param)
    result = []
    for (muon, decay), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], not kv[0][1])):
        group: dict[str, Any] = {"params": params}
        if not decay:
            group["weight_decay"] = 0.0
        if split_hidden_matrices:
            group["use_muon"] = muon
        result.append(group)
    return result


def _plain(value: Any) -> Any:
    """Config lists (OmegaConf ListConfig) as tuples: what optimizers expect, and checkpoints
    that load with ``weights_only=True``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or hasattr(value, "keys"):
        return value
    return tuple(_plain(v) for v in value)


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer],
    net: nn.Module,
    no_weight_decay: bool = False,
    clips_gradients: bool = False,
) -> torch.optim.Optimizer:
    """The optimizer of ``net`` from a config partial (``functools.partial(cls, lr=..., ...)``)
    or any callable taking parameter groups.

    ``lr_scale`` in the partial's keywords is consumed here (``lr = lr * lr_scale``); an optimizer
    class with ``split_hidden_matrices = True`` (:class:`MuonAdamW`) gets groups flagged
    ``use_muon``.
    """
    if isinstance(factory, functools.partial):
        keywords = {k: _plain(v) for k, v in factory.keywords.items()}
        scale = keywords.pop("lr_scale", None)
        if scale is not None:
            if "lr" not in keywords:
                raise ValueError("optimizer.lr_scale is set but optimizer.lr is not")
            keywords["lr"] = keywords["lr"] * scale
        target = factory.func
        if optimizer_kernel(factory, next(net.parameters()).device.type, clips_gradients) == "fused":
            keywords["fused"] = True
        factory = functools.partial(target, *factory.args, **keywords)
    else:
        target = factory
    split = bool(getattr(target, "split_hidden_matrices", False))
    return factory(param_groups(net, no_weight_decay, split))


def optimizer_kernel(factory: Callable[..., torch.optim.Optimizer], device: str, clips_gradients: bool = False) -> str:
    """How the optimizer's step runs: ``fused`` (one kernel over all tensors), ``foreach`` (batched
    tensor ops) or ``default`` (torch's own choice: foreach on CUDA, a loop over tensors on the CPU).

    On the CPU an optimizer with a fused kernel (Adam, AdamW, SGD, Adagrad) uses it unless
    ``optimizer.fused`` or ``optimizer.foreach`` is set, or gradients are clipped
    (``trainer.gradient_clip_val``: Lightning clips only optimizers that are not fused). The update
    is the same, and the step faster: 2 % of the bf16 ViT step, 4 % of the LSTM's (BENCHMARKS.md,
    ``bench/cpu_step.py --optimizer-impl``). CUDA keeps torch's choice.
    """
    if not isinstance(factory, functools.partial):  # a callable of its own: it decides
        return "default"
    target, keywords = factory.func, factory.keywords
    if keywords.get("fused") is not None:
        if keywords["fused"] and clips_gradients:
            raise ConfigError(
                "optimizer.fused=true with trainer.gradient_clip_val: Lightning clips only optimizers that "
                "are not fused; drop one of the two"
            )
        return "fused" if keywords["fused"] else "default"
    if keywords.get("foreach") is not None:
        return "foreach" if keywords["foreach"] else "default"
    try:
        takes_fused = "fused" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        takes_fused = False
    return "fused" if device == "cpu" and takes_fused and not clips_gradients else "default"


def kernel_in_use(optimizer: torch.optim.Optimizer) -> str:
    """The kernel an optimizer's step runs (its groups' flags; :func:`optimizer_kernel`'s names)."""
    groups = optimizer.param_groups
    if all(g.get("fused") for g in groups):
        return "fused"
    if all(g.get("foreach") for g in groups):
        return "foreach"
    return "default"


class MuonAdamW(torch.optim.Optimizer):
    """Muon for 2-D hidden weight matrices, AdamW for the rest, as one optimizer.

    ``params`` are groups carrying ``use_muon`` (see :func:`param_groups`). Both parts share
    ``lr`` and ``weight_decay`` (a group's own ``weight_decay`` wins, e.g. 0 for norms);
    ``adjust_lr_fn="match_rms_adamw"`` (the default here) scales Muon's orthogonalised update to
    the RMS of an AdamW update (Liu et al. 2025, "Muon is Scalable for LLM Training"), which is what
    lets the two share one learning rate. ``momentum``, ``nesterov``, ``ns_steps`` are Muon's;
    ``betas``, ``eps`` AdamW's.

    One optimizer rather than two keeps Lightning's automatic optimization (one ``step``), the LR
    scheduler (it walks ``param_groups``: both parts), gradient clipping and checkpoints as they
    are for every other optimizer.
    """

    split_hidden_matrices = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = "match_rms_adamw",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        groups = [dict(g) for g in params]
        if not groups or not all(isinstance(g, dict) and "use_muon" in g for g in groups):
            raise ValueError(
                "MuonAdamW takes parameter groups flagged with use_muon "
                "(lightning_modules.optim.param_groups(net, split_hidden_matrices=True))"
            )
        muon_groups = [g for g in groups if g["use_muon"]]
        adamw_groups = [g for g in groups if not g["use_muon"]]
        # the parts own the group dicts; this optimizer lists the same dicts (schedulers, clipping)
        self._muon = (
            torch.optim.Muon(
                muon_groups,
                lr=lr,
                weight_decay=weight_decay,
                momentum=momentum,
                nesterov=nesterov,
                ns_steps=ns_steps,
                adjust_lr_fn=adjust_lr_fn,
            )
            if muon_groups
            else None
        )
        self._adamw = (
            torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
            if adamw_groups
            else None
        )
        super().__init__(muon_groups + adamw_groups, defaults={})
        self.defaults = {"lr": lr, "weight_decay": weight_decay}
        self._link()

    def _parts(self) -> list[torch.optim.Optimizer]:
        return [p for p in (self._muon, self._adamw) if p is not None]

    def _link(self) -> None:
        """Point both parts at this optimizer's group dicts and state (after init and load)."""
        n_muon = sum(1 for g in self.param_groups if g["use_muon"])
        if self._muon is not None:
            self._muon.param_groups = self.param_groups[:n_muon]
            self._muon.state = self.state
        if self._adamw is not None:
            self._adamw.param_groups = self.param_groups[n_muon:]
            self._adamw.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self._parts():
            part.step()
        return loss


# -- optimizers with train/eval modes (Schedule-Free) --------------------------------------------
def has_modes(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` has train/eval modes (Schedule-Free: ``train_mode`` in its groups)."""
    return (
        callable(getattr(optimizer, "train", None))
        and callable(getattr(optimizer, "eval", None))
        and bool(optimizer.param_groups)
        and "train_mode" in optimizer.param_groups[0]
    )


def in_train_mode(optimizer: torch.optim.Optimizer) -> bool:
    return bool(optimizer.param_groups[0]["train_mode"])


def set_mode(optimizers, train: bool) -> list[torch.optim.Optimizer]:
    """Put the optimizers that have modes into train or eval mode; returns those that changed."""
    changed = []
    for opt in optimizers:
        if has_modes(opt) and in_train_mode(opt) != train:
            opt.train() if train else opt.eval()
            changed.append(opt)
    return changed


@contextmanager
def eval_mode(optimizers) -> Iterator[None]:
    """Eval mode inside the block, back to train mode after for those that were in train mode."""
    changed = set_mode(optimizers, train=False)
    try:
        yield
    finally:
        set_mode(changed, train=True)
