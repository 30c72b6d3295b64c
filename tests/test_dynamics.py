"""Training dynamics (``lightning_modules/callbacks/dynamics.py``, ``analysis/dynamics.py``).

Every logged number is checked against an independent computation on the same step: gradient
norms from the blocks' ``.grad``, update ratios from copies of the weights taken around an SGD
step, residual-stream norms from the outputs of separate forward hooks (and, for the LSTM's inner
layers, separate one-layer LSTMs with the same weights). Steps that are not logging steps run no
hook and record nothing. The report's figures are drawn from synthetic run directories.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

from analysis.dynamics import grad_norm_summary, load_dynamics, write_dynamics
from lightning_modules.callbacks.dynamics import TrainingDynamics, parameter_groups
from lightning_modules.language_model import LanguageModel
from lightning_modules.vit_classifier import ViTClassifier
from tests.helpers import assert_close_rel

EVERY = 2
STEPS = 5  # logging steps 0, 2, 4


class Spy(pl.Callback):
    """Independent measurements on every step, taken by hand beside the callback under test."""

    def __init__(self, blocks: dict[str, list[nn.Parameter]], hooked: dict[str, tuple[nn.Module, str]]) -> None:
        self.blocks, self.hooked = blocks, hooked
        self.grad: dict[int, dict[str, torch.Tensor]] = {}
        self.ratio: dict[int, dict[str, torch.Tensor]] = {}
        self.weight: dict[int, dict[str, torch.Tensor]] = {}
        self.outputs: dict[int, dict[str, torch.Tensor]] = {}
        self.weights_at: dict[int, dict[str, torch.Tensor]] = {}  # the weights each step's forward saw
        self.armed_hooks: dict[int, int] = {}  # step -> forward hooks found on the net's modules
        self._before: dict[str, list[torch.Tensor]] = {}
        self._step = 0
        for name, (module, where) in hooked.items():
            if where == "input":
                module.register_forward_pre_hook(lambda m, a, name=name: self._keep(name, a[0]))
            else:
                module.register_forward_hook(lambda m, a, o, name=name: self._keep(name, o))

    def _keep(self, name, tensor):
        tensor = tensor[0] if isinstance(tensor, tuple) else tensor
        self.outputs.setdefault(self._step, {})[name] = tensor.detach().clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step = trainer.global_step
        net = pl_module.net
        self.weights_at[self._step] = {n: p.detach().clone() for n, p in net.named_parameters()}
        self.armed_hooks[self._step] = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        step = trainer.global_step
        self.grad[step] = {
            b: torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ps])) for b, ps in self.blocks.items()
        }
        self.weight[step] = {
            b: torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in ps])) for b, ps in self.blocks.items()
        }
        self._before = {b: [p.detach().clone() for p in ps] for b, ps in self.blocks.items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1
        self.ratio[step] = {
            b: torch.linalg.vector_norm(torch.cat([(p.detach() - q).flatten() for p, q in zip(ps, self._before[b])]))
            / torch.linalg.vector_norm(torch.cat([q.flatten() for q in self._before[b]]))
            for b, ps in self.blocks.items()
        }


def _fit(module, dataset, callbacks, batch_size=8):
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=STEPS,
    )
    trainer.fit(module, DataLoader(dataset, batch_size=batch_size))
    assert trainer.global_step == STEPS


def _token_norm(x: torch.Tensor) -> torch.Tensor:
    return x.norm(dim=-1).mean()


def _check_logged(dyn: TrainingDynamics, spy: Spy, blocks: list[str]) -> None:
    assert [r["step"] for r in dyn.records] == list(range(0, STEPS, EVERY))
    for record in dyn.records:
        step = record["step"]
        assert sorted(record["grad_norm"]) == sorted(blocks + ["all"])
        for b in blocks:
            assert_close_rel(torch.tensor(record["grad_norm"][b]), spy.grad[step][b], msg=f"grad {b} @{step}")
            assert_close_rel(torch.tensor(record["weight_norm"][b]), spy.weight[step][b], msg=f"weight {b}")
            assert_close_rel(
                torch.tensor(record["update_ratio"][b]), spy.ratio[step][b], rtol=1e-4, msg=f"update ratio {b} @{step}"
            )
        total = torch.linalg.vector_norm(torch.stack(list(spy.grad[step].values())))
        assert_close_rel(torch.tensor(record["grad_norm"]["all"]), total)
    # hooks exist on logging steps only (the spy's own hooks are always there)
    own = spy.armed_hooks[1]
    assert all(spy.armed_hooks[s] == own for s in range(STEPS) if s % EVERY)
    assert all(spy.armed_hooks[s] > own for s in range(0, STEPS, EVERY))


def test_vit_norms_match_hand_computation():
    torch.manual_seed(0)
    module = ViTClassifier(
        optimizer=partial(torch.optim.SGD, lr=0.05), embed_dim=16, hidden_dim=32, num_heads=2, num_layers=3
    )
    net = module.net
    groups = parameter_groups(net)
    assert list(groups) == ["embed", "block0", "block1", "block2", "head"]
    assert [n for n, _ in groups["embed"]] == ["cls_token", "pos_embed", "patch_embed.weight", "patch_embed.bias"]
    assert all(n.startswith("blocks.1.") for n, _ in groups["block1"])
    blocks = {
        "embed": [net.patch_embed.weight, net.patch_embed.bias, net.cls_token, net.pos_embed],
        **{f"block{i}": list(b.parameters()) for i, b in enumerate(net.blocks)},
        "head": list(net.head.parameters()),
    }
    hooked = {
        "embed": (net.blocks[0], "input"),
        **{f"block{i}": (b, "output") for i, b in enumerate(net.blocks)},
        "head": (net.head, "output"),
    }
    spy = Spy(blocks, hooked)
    dyn = TrainingDynamics(every_n_steps=EVERY)
    x, y = torch.randn(STEPS * 8, 3, 32, 32), torch.randint(0, 10, (STEPS * 8,))
    _fit(module, TensorDataset(x, y), [dyn, spy])
    _check_logged(dyn, spy, list(blocks))
    for record in dyn.records:
        # plain SGD: ||W_after - W_before|| = lr ||grad||, so the ratio is lr * grad norm / weight norm
        for b in blocks:
            expected = torch.tensor(0.05 * record["grad_norm"][b] / record["weight_norm"][b])
            assert_close_rel(torch.tensor(record["update_ratio"][b]), expected, rtol=1e-4, msg=b)
        outs = spy.outputs[record["step"]]
        assert list(record["residual_norm"]) == list(hooked)
        for name, tensor in outs.items():
            assert_close_rel(torch.tensor(record["residual_norm"][name]), _token_norm(tensor), msg=name)


def test_lstm_norms_match_hand_computation():
    torch.manual_seed(0)
    module = LanguageModel(
        optimizer=partial(torch.optim.SGD, lr=0.5), vocab_size=40, embedding_size=12, hidden_size=10, num_layers=2
    )
    net = module.net
    blocks = {
        "embedding": [net.embedding.weight],  # tied with the classifier: one parameter
        "layer0": [p for n, p in net.lstm.named_parameters() if n.endswith("_l0")],
        "layer1": [p for n, p in net.lstm.named_parameters() if n.endswith("_l1")],
        "projection": list(net.projection.parameters()),
    }
    assert list(parameter_groups(net)) == list(blocks)
    spy = Spy(
        blocks,
        {
            "embedding": (net.embedding, "output"),
            "lstm": (net.lstm, "output"),
            "projection": (net.projection, "output"),
        },
    )
    dyn = TrainingDynamics(every_n_steps=EVERY)
    tokens = torch.randint(0, 40, (STEPS * 4, 9))
    _fit(module, TensorDataset(tokens[:, :-1], tokens[:, 1:], torch.ones(STEPS * 4, 8)), [dyn, spy], batch_size=4)
    _check_logged(dyn, spy, list(blocks))
    for record in dyn.records:
        outs = spy.outputs[record["step"]]
        assert list(record["residual_norm"]) == ["embedding", "layer0", "layer1", "projection"]
        # each layer by hand: separate one-layer LSTMs holding the fused module's weights of that
        # step (the record's weight norms are those before the update, as the forward pass saw them)
        x = outs["embedding"]
        for i in range(2):
            layer = nn.LSTM(x.shape[-1], 10, 1, batch_first=True)
            with torch.no_grad():
                for n, p in layer.named_parameters():
                    p.copy_(spy.weights_at[record["step"]][f"lstm.{n[:-3]}_l{i}"])
                x = layer(x)[0]
            assert_close_rel(torch.tensor(record["residual_norm"][f"layer{i}"]), _token_norm(x), msg=f"layer{i}")
        assert_close_rel(torch.tensor(record["residual_norm"]["layer1"]), _token_norm(outs["lstm"]))
        for name in ("embedding", "projection"):
            assert_close_rel(torch.tensor(record["residual_norm"][name]), _token_norm(outs[name]), msg=name)


# -- the report's figures from synthetic runs --------------------------------------------------------
def _synthetic_run(root: Path, name: str, study_config: str, blocks: list[str], grad, ratio) -> Path:
    """A completed run directory whose dynamics.jsonl holds known numbers: grad(step, i) and
    ratio(step) for block i at steps 0, 10, ..., 90."""
    run = root / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(
        json.dumps({"status": "completed", "task": "vit", "experiment": {"study_config": study_config, "label": name}})
    )
    with (run / "dynamics.jsonl").open("w") as f:
        for step in range(0, 100, 10):
            record = {
                "step": step,
                "epoch": 0,
                "grad_norm": {b: grad(step, i) for i, b in enumerate(blocks)},
                "weight_norm": {b: 10.0 for b in blocks},
                "update_ratio": {**{b: ratio(step) for b in blocks}, "all": ratio(step)},
                "residual_norm": {b: 1.0 for b in blocks},
            }
            f.write(json.dumps(record) + "\n")
        f.write('{"step": 100, "grad_no')  # a torn last line (a killed run) is skipped
    return run


def test_figures_from_synthetic_dynamics(tmp_path):
    from analysis import load_runs

    vit6 = ["embed"] + [f"block{i}" for i in range(6)] + ["head"]
    # post-norm: gradients grow towards the output at first (x2 per block), flat at the end; pre-norm flat
    _synthetic_run(tmp_path, "post", "table2/7", vit6, lambda s, i: 2.0**i if s == 0 else 1.0, lambda s: 1e-3)
    _synthetic_run(tmp_path, "pre", "table2/6", vit6, lambda s, i: 1.0 if s == 0 else 0.5, lambda s: 1e-3)
    vit2 = ["embed", "block0", "block1", "head"]
    _synthetic_run(tmp_path, "sgd", "table2/3", vit2, lambda s, i: 1.0, lambda s: 1e-6 * (1 + s))
    _synthetic_run(tmp_path, "adamw", "table2/2", vit2, lambda s, i: 1.0, lambda s: 1e-3)

    frame = load_dynamics(tmp_path / "post")
    assert sorted(frame["step"].unique()) == list(range(0, 100, 10))
    summary = grad_norm_summary(frame)
    assert summary["early_step"] == 0 and summary["late_steps"] == [50, 90]
    assert summary["early_last_over_first"] == pytest.approx(2.0**6 / 2.0)  # block5 / block0
    assert summary["late_last_over_first"] == pytest.approx(1.0)

    out = tmp_path / "report"
    report = write_dynamics(load_runs(tmp_path), out)
    assert [f.name for f in report.files] == [
        "dynamics_grad_norm_by_layer.png",
        "dynamics_grad_norm_by_layer.csv",
        "dynamics_update_ratio.png",
        "dynamics_update_ratio.csv",
    ]
    table = pd.read_csv(out / "dynamics_grad_norm_by_layer.csv")
    post_early = table[(table["configuration"].str.startswith("post")) & (table["when"] == "early")].iloc[0]
    assert post_early["block5"] == 2.0**6 and post_early["last/first"] == 32.0
    for f in report.files[::2]:
        image = matplotlib.image.imread(f)
        assert image.shape[0] > 200 and image.shape[1] > 400
    sgd = next(v for k, v in report.summary.items() if k.startswith("SGD"))
    assert sgd["median_update_ratio"] == pytest.approx(1e-6 * (1 + 45))  # median of steps 0..90
    assert "| post-norm (table2/7, n=1) | 0 | 32 | 50-90 | 1 |" in report.markdown
    # the configurations without runs are named, with the command that makes them
    assert "table2/1, table2/4" in report.markdown and "experiment=table2_1_adam" in report.markdown


def test_no_runs_no_figures_and_a_note(tmp_path):
    from analysis import load_runs

    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"status": "completed", "task": "vit", "experiment": {}}))
    report = write_dynamics(load_runs(tmp_path), tmp_path / "report")
    assert report.files == []
    assert "no run with dynamics for table2/6, table2/7" in report.markdown


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def test_nothing_runs_between_logging_steps():
    """The callback's own hooks dispatch no tensor operation at all on the steps between logging
    steps (so no device sync, no copy, no kernel), and do their work on the logging steps."""
    torch.manual_seed(0)
    module = ViTClassifier(
        optimizer=partial(torch.optim.AdamW, lr=1e-3), embed_dim=8, hidden_dim=8, num_heads=1, num_layers=1
    )
    dyn = TrainingDynamics(every_n_steps=3)
    ops: dict[tuple[int, str], int] = {}
    steps = {"step": 0}

    def counted(name):
        original = getattr(dyn, name)

        def wrapper(trainer, *args, **kwargs):
            if name == "on_train_batch_start":
                steps["step"] = trainer.global_step
            with _CountOps() as counter:
                original(trainer, *args, **kwargs)
            key = (steps["step"], name)
            ops[key] = ops.get(key, 0) + counter.ops

        return wrapper

    for name in ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end"):
        setattr(dyn, name, counted(name))
    x, y = torch.randn(STEPS * 8, 3, 32, 32), torch.randint(0, 10, (STEPS * 8,))
    _fit(module, TensorDataset(x, y), [dyn])
    assert [r["step"] for r in dyn.records] == [0, 3]
    for (step, name), n in ops.items():
        if step % 3:
            assert n == 0, f"{n} tensor ops in {name} at step {step}, not a logging step"
    assert ops[(0, "on_before_optimizer_step")] > 0 and ops[(3, "on_train_batch_end")] > 0


def test_bad_interval_is_a_config_error():
    from omegaconf import OmegaConf

    from lmvit.config import ConfigError, validate

    target = "lightning_modules.callbacks.dynamics.TrainingDynamics"  # the class that owns the setting checks it
    cfg = OmegaConf.create({"callbacks": {"dynamics": {"_target_": target, "every_n_steps": 0}}})
    with pytest.raises(ConfigError, match="callbacks.dynamics.every_n_steps=0: must be an integer >= 1"):
        validate(cfg)
    validate(OmegaConf.create({"callbacks": {"dynamics": None}}))  # switched off: nothing to check


@pytest.mark.slow
def test_train_py_writes_dynamics_and_the_report_draws_them(tmp_path, data_dir):
    """train.py with the default callbacks (a tiny 6-layer post-norm preset, debug=fast: 6 steps):
    dynamics.jsonl, the TensorBoard scalars, and the report's gradient-norm figure and section."""
    from analysis import load_scalars, write_report
    from tests.helpers import find_runs, run_train

    run_train(
        "experiment=table2_7_adamw_6l_post",
        "debug=fast",
        "model.embed_dim=16",
        "model.hidden_dim=16",
        "model.num_heads=2",
        "callbacks.dynamics.every_n_steps=2",
        "callbacks.progress_bar=null",
        "test=false",
        log_dir=tmp_path,
        data_dir=data_dir,
        env={"OMP_NUM_THREADS": "1"},
    )
    (run,) = find_runs(tmp_path)
    frame = load_dynamics(run)
    assert sorted(frame["step"].unique()) == [0, 2, 4]  # 2 epochs x 3 batches, every 2 steps
    blocks = ["embed"] + [f"block{i}" for i in range(6)] + ["head"]
    for metric in ("grad_norm", "weight_norm", "update_ratio", "residual_norm"):
        logged = set(frame[frame["metric"] == metric]["block"])
        assert logged == set(blocks) | ({"all"} if metric != "residual_norm" else set()), metric
    assert frame["value"].gt(0).all()
    scalars = load_scalars([run])
    tb = scalars[scalars["tag"] == "dynamics/grad_norm/block5"].sort_values("step")
    jsonl = frame[(frame["metric"] == "grad_norm") & (frame["block"] == "block5")].sort_values("step")
    assert list(tb["step"]) == [0, 2, 4]
    assert tb["value"].to_numpy() == pytest.approx(jsonl["value"].to_numpy(), rel=1e-6)

    report = write_report(tmp_path / "debug", tmp_path / "report")  # debug presets write below <log_dir>/debug
    assert (tmp_path / "report" / "dynamics_grad_norm_by_layer.png") in report.files
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "## Training dynamics" in readme and "post-norm (table2/7, n=1)" in readme
    assert "no run with dynamics for table2/6" in readme
