"""Training dynamics every N optimizer steps: per-block gradient norm, weight norm, update-to-weight
ratio and the norm of the residual stream after each block.

Blocks (:func:`parameter_groups`, :func:`residual_points`) are those the net declares with
``dynamics_blocks()`` (name -> parameter-name prefixes, input side first):

* ViT: ``embed`` (``patch_embed``, ``cls_token``, ``pos_embed``), ``block<i>`` (``net.blocks.<i>``),
  ``head`` (final LayerNorm + classifier);
* LSTM: ``embedding`` (tied with the output layer), ``layer<i>`` (``lstm.*_l<i>``), ``projection``;
* another net: one group per top-level child (``<child><i>`` for the items of a Sequential or
  ModuleList), and no residual-stream norms.

A net with ``ffn_output_weights()`` (the ViT: each block's FFN second weight matrix) also gets
``ffn_grad_norm`` per block, the quantity Xiong et al. (2020) compare between pre- and post-norm.

At initialisation (``on_train_start`` of a run at step 0) the callback runs ``init_batches``
forward and backward passes on the first training batches of epoch 0 (the ones training is about
to see), without any optimizer step, and records each pass's per-block gradient norms as
``{"phase": "init", "batch": k, ...}`` lines. The random-number generators (torch, CUDA, numpy,
Python), the gradients and the training metrics are restored afterwards, so training is the same
with and without this measurement.

On a logging step (``global_step % every_n_steps == 0``) the callback registers forward hooks on the
blocks for that step's forward pass, reads the gradients before the optimizer step (before gradient
clipping), keeps a copy of the weights, and after the step computes ``||W_after - W_before|| /
||W_before||`` per block. Everything stays on the device until one read (one sync) at the end of the
logging step. Other steps run no code of it beyond an integer test: no hooks, no copies, no sync.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import random
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from lightning_modules.nets.lstm import LSTMLanguageModel
from lightning_modules.nets.vit import VisionTransformer
from lmvit.settings import FLAG, NON_NEGATIVE_INT, POSITIVE_INT, Checked

log = logging.getLogger(__name__)

METRICS = ("grad_norm", "ffn_grad_norm", "weight_norm", "update_ratio", "residual_norm")
ALL = "all"  # the whole net, beside its blocks


# -- which parameters and activations belong to which block ------------------------------------
def _generic_group(name: str) -> str:
    parts = name.split(".")
    if len(parts) > 2 and parts[1].isdigit():
        return f"{parts[0]}{parts[1]}"
    return parts[0]


def _declared_group(name: str, declared: dict[str, list[str]]) -> str | None:
    for block, prefixes in declared.items():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return block
    return None


def parameter_groups(net: nn.Module) -> OrderedDict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable parameters by block: the net's ``dynamics_blocks()`` in their order (a tied
    parameter counts once, under the first name it has: the LSTM's embedding), else one group per
    top-level child."""
    declared = net.dynamics_blocks() if hasattr(net, "dynamics_blocks") else {}
    groups: OrderedDict[str, list[tuple[str, nn.Parameter]]] = OrderedDict((b, []) for b in declared)
    for name, p in net.named_parameters():
        if p.requires_grad:
            groups.setdefault(_declared_group(name, declared) or _generic_group(name), []).append((name, p))
    return OrderedDict((b, params) for b, params in groups.items() if params)


def ffn_weights(net: nn.Module) -> dict[str, nn.Parameter]:
    """Per block, the FFN's second weight matrix, where the net declares it."""
    return net.ffn_output_weights() if hasattr(net, "ffn_output_weights") else {}


def residual_points(net: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, ``"input"`` | ``"output"``): where the residual stream is read, in order."""
    if isinstance(net, VisionTransformer):
        points = [("embed", net.blocks[0], "input")]  # what enters the first block: patches + cls + pos
        points += [(f"block{i}", block, "output") for i, block in enumerate(net.blocks)]
        return points + [("head", net.head, "output")]
    if isinstance(net, LSTMLanguageModel):
        # the LSTM's layers are one fused module: its hook reads every layer (see _lstm_layers)
        return [
            ("embedding", net.embedding, "output"),
            ("lstm", net.lstm, "output"),
            ("projection", net.projection, "output"),
        ]
    return []


def token_norm(x: torch.Tensor) -> torch.Tensor:
    """Mean over all positions (batch, tokens) of the L2 norm over the feature (last) dimension."""
    return torch.linalg.vector_norm(x.detach().float(), dim=-1).mean()


@torch.no_grad()
def _lstm_layers(lstm: nn.LSTM, x: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's output sequence for input ``x`` (batch_first), from a zero state: the fused
    module returns only the last layer's, so the layers are rerun one at a time (logging steps
    only; without the inter-layer dropout, which the study does not use)."""
    outputs = []
    for i in range(lstm.num_layers):
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if lstm.bias else [])
        weights = [getattr(lstm, f"{n}_l{i}") for n in names]
        zeros = x.new_zeros(1, x.shape[0] if lstm.batch_first else x.shape[1], lstm.hidden_size)
        x = torch.lstm(x, (zeros, zeros), weights, lstm.bias, 1, 0.0, False, False, lstm.batch_first)[0]
        outputs.append(x)
    return outputs


def _norm_of_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)).float())


def _first_batches(trainer, k: int) -> list:
    """The first ``k`` batches of epoch 0 of the training loader (at most the epoch's batches),
    built from a copy of its sampler: the loader itself, its sampler and workers are not touched."""
    loader = trainer.train_dataloader
    batch_size = getattr(loader, "batch_size", None)
    if not isinstance(loader, torch.utils.data.DataLoader) or not batch_size or loader.sampler is None:
        return []
    limit = trainer.num_training_batches
    k = min(k, int(limit)) if limit != float("inf") else k
    indices = list(itertools.islice(iter(copy.copy(loader.sampler)), k * batch_size))
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices) - batch_size + 1, batch_size)]
    return [loader.collate_fn([loader.dataset[i] for i in chunk]) for chunk in chunks]


@contextmanager
def _rng_kept(device: torch.device):
    """Every random-number generator a training step may draw from, restored on exit."""
    devices = [device.index or 0] if device.type == "cuda" else []
    py_state = random.getstate()
    np_state = None
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        pass
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        if np_state is not None:
            np.random.set_state(np_state)


# -- the callback --------------------------------------------------------------------------------
class TrainingDynamics(Checked, pl.Callback):
    """Logs ``dynamics/<metric>/<block>`` every ``every_n_steps`` optimizer steps.

    Metrics: ``grad_norm`` (L2 norm of the block's gradients, before clipping), ``ffn_grad_norm``
    (that of the block's FFN second weight matrix, where the net declares one), ``weight_norm``
    (before the step), ``update_ratio`` (``||W_after - W_before|| / ||W_before||`` over the
    optimizer step), ``residual_norm`` (the activations after the block: mean over positions of
    the L2 norm over features; with gradient accumulation, the mean over the step's micro-batches).
    ``<block>`` ``all`` is the whole net. The step of a record is the optimizer step whose gradients
    and update it measures (0 = the first step, from the initial weights).

    Each record also goes, as one JSON line, to ``path`` (``dynamics.jsonl`` in the run directory,
    global rank 0 only), which ``analysis.dynamics`` reads without TensorBoard. Under DDP the
    gradients and weights are the same on every process; the residual norms are rank 0's batch.
    """

    SETTINGS = {"every_n_steps": POSITIVE_INT, "residual_norms": FLAG, "init_batches": NON_NEGATIVE_INT}
    PREFIX = "callbacks.dynamics."

    def __init__(
        self, every_n_steps: int = 50, path: str | None = None, residual_norms: bool = True, init_batches: int = 8
    ) -> None:
        self.check_settings(
            {"every_n_steps": every_n_steps, "residual_norms": residual_norms, "init_batches": init_batches}
        )
        self.every = every_n_steps
        self.init_batches = init_batches
        self.init_records: list[dict] = []  # the measurement at initialisation, one per batch
        self.path = Path(path) if path else None
        self.residual_norms = residual_norms
        self.records: list[dict] = []  # what was logged, in memory too
        self._step: int | None = None  # the optimizer step being measured
        self._handles: list = []
        self._residual: dict[str, list[torch.Tensor]] = {}
        self._pre: dict[str, dict[str, torch.Tensor]] = {}
        self._before: list[torch.Tensor] | None = None
        self._groups: OrderedDict[str, list[tuple[str, nn.Parameter]]] = OrderedDict()

    @staticmethod
    def _net(pl_module: nn.Module) -> nn.Module:
        net = getattr(pl_module, "net", None)
        return net if isinstance(net, nn.Module) else pl_module

    # -- at initialisation: K forward/backward passes, no step, everything restored
    def on_train_start(self, trainer, pl_module) -> None:
        if self.init_batches == 0 or trainer.global_step > 0 or not hasattr(pl_module, "step"):
            return
        batches = _first_batches(trainer, self.init_batches)
        if not batches:
            return
        net = self._net(pl_module)
        params = [p for p in pl_module.parameters() if p.requires_grad]
        grads = [p.grad for p in params]
        numbers = []
        with _rng_kept(pl_module.device), ExitStack() as stack:
            model = trainer.strategy.model
            if hasattr(model, "no_sync"):  # DDP: no gradient all-reduce for these passes
                stack.enter_context(model.no_sync())
            for batch in batches:
                for p in params:
                    p.grad = None
                batch = trainer.strategy.batch_to_device(batch)
                with trainer.precision_plugin.train_step_context():
                    loss = pl_module.step(batch, "train")
                loss.backward()
                numbers.append(self._grad_norms(net))
        for p, g in zip(params, grads):
            p.grad = g
        for metric in getattr(pl_module, "metrics", {}).get("train", {}).values():
            metric.reset()  # the passes updated the training metrics: back to their empty state
        for k, values in enumerate(numbers):
            record = {"phase": "init", "batch": k, "step": 0, "epoch": 0}
            record.update({m: {b: float(v) for b, v in blocks.items()} for m, blocks in values.items()})
            self.init_records.append(record)
            if trainer.is_global_zero and self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as f:
                    f.write(json.dumps(record) + "\n")

    @staticmethod
    def _grad_norms(net: nn.Module) -> dict[str, dict[str, float]]:
        """Per block, the gradient norm of the block and of its FFN second weight matrix."""
        grad_norm = {}
        for name, params in parameter_groups(net).items():
            grads = [p.grad for _, p in params if p.grad is not None]
            if grads:
                grad_norm[name] = _norm_of_norms(grads)
        ffn = {b: torch.linalg.vector_norm(p.grad.float()) for b, p in ffn_weights(net).items() if p.grad is not None}
        keys = [("grad_norm", b) for b in grad_norm] + [("ffn_grad_norm", b) for b in ffn]
        values = torch.stack([*grad_norm.values(), *ffn.values()]).detach().cpu().tolist() if keys else []
        out: dict[str, dict[str, float]] = {}
        for (metric, block), value in zip(keys, values):
            out.setdefault(metric, {})[block] = value
        return out

    # -- arming: hooks only for the forward passes of a logging step
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every or self._step == step:
            return
        self._disarm()
        self._step = step
        if self.residual_norms:
            net = self._net(pl_module)
            if getattr(net, "_compiled_call_impl", None) is not None:
                # torch.compile does not guard on forward hooks: hooks added after the first
                # compile are silently ignored, so the norms would be missing or stale
                log.warning(
                    "callbacks.dynamics: the net is compiled (model.compile), so residual-stream "
                    "norms are not recorded; gradient, weight and update norms are."
                )
                self.residual_norms = False
            else:
                self._register(net)

    def _register(self, net: nn.Module) -> None:
        for name, module, where in residual_points(net):
            if where == "input":
                hook = module.register_forward_pre_hook(self._input_hook(name))
            elif isinstance(module, nn.LSTM):
                hook = module.register_forward_hook(self._lstm_hook(name))
            else:
                hook = module.register_forward_hook(self._output_hook(name))
            self._handles.append(hook)

    def _input_hook(self, name: str):
        def hook(module, args):
            self._residual.setdefault(name, []).append(token_norm(args[0]))

        return hook

    def _output_hook(self, name: str):
        def hook(module, args, output):
            self._residual.setdefault(name, []).append(token_norm(output))

        return hook

    def _lstm_hook(self, name: str):
        def hook(module, args, output):
            if module.num_layers == 1:
                layers = [output[0]]
            else:
                layers = _lstm_layers(module, args[0])
            for i, out in enumerate(layers):
                self._residual.setdefault(f"layer{i}", []).append(token_norm(out))

        return hook

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _disarm(self) -> None:
        self._remove_hooks()
        self._step, self._residual, self._pre, self._before = None, {}, {}, None

    # -- before the update: gradients, weights, and a copy of the weights
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._step is None or self._step != trainer.global_step:
            return
        self._remove_hooks()  # the forward passes of this step are over
        groups = parameter_groups(self._net(pl_module))
        grad_norm, weight_norm = {}, {}
        for name, params in groups.items():
            grads = [p.grad for _, p in params if p.grad is not None]
            if grads:
                grad_norm[name] = _norm_of_norms(grads)
            weight_norm[name] = _norm_of_norms([p.detach() for _, p in params])
        if grad_norm:
            grad_norm[ALL] = torch.linalg.vector_norm(torch.stack(list(grad_norm.values())))
        weight_norm[ALL] = torch.linalg.vector_norm(torch.stack(list(weight_norm.values())))
        ffn = {
            b: torch.linalg.vector_norm(p.grad.float())
            for b, p in ffn_weights(self._net(pl_module)).items()
            if p.grad is not None
        }
        self._pre = {"grad_norm": grad_norm, "ffn_grad_norm": ffn, "weight_norm": weight_norm}
        self._groups = groups
        self._before = [p.detach().clone() for params in groups.values() for _, p in params]

    # -- after the update: the update ratio, then one read of everything
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._step is None or trainer.global_step == self._step:
            return  # not a logging step, or still accumulating gradients
        if self._before is None:  # the step was skipped (no optimizer step happened)
            self._disarm()
            return
        after = [p.detach() for params in self._groups.values() for _, p in params]
        deltas = torch._foreach_norm(torch._foreach_sub(after, self._before))
        update_ratio, i, squares = {}, 0, []
        for name, params in self._groups.items():
            delta = torch.linalg.vector_norm(torch.stack(deltas[i : i + len(params)]).float())
            squares.append(delta)
            update_ratio[name] = delta / self._pre["weight_norm"][name]
            i += len(params)
        update_ratio[ALL] = torch.linalg.vector_norm(torch.stack(squares)) / self._pre["weight_norm"][ALL]
        values = {
            **self._pre,
            "update_ratio": update_ratio,
            "residual_norm": {k: torch.stack(v).mean() for k, v in self._residual.items()},
        }
        self._emit(trainer, self._step, values)
        self._disarm()

    def _emit(self, trainer, step: int, values: dict[str, dict[str, torch.Tensor]]) -> None:
        keys = [(metric, block) for metric in METRICS for block in values.get(metric, {})]
        if not keys:
            return
        numbers = torch.stack([values[m][b].detach().float().cpu() for m, b in keys]).tolist()  # one sync
        record: dict = {"step": step, "epoch": trainer.current_epoch}
        for (metric, block), number in zip(keys, numbers):
            record.setdefault(metric, {})[block] = number
        self.records.append(record)
        if not trainer.is_global_zero:
            return
        scalars = {f"dynamics/{m}/{b}": v for (m, b), v in zip(keys, numbers)}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:  # one line per record; a resumed run appends
                f.write(json.dumps(record) + "\n")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._disarm()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._disarm()
