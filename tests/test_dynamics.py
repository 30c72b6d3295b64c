"""Training dynamics (``lightning_modules/callbacks/dynamics.py``, ``analysis/dynamics.py``).

Every logged number is checked against an independent computation on the same step: gradient
norms from the blocks' ``.grad``, update ratios from copies of the weights taken around an SGD
step, residual-stream norms from the outputs of separate forward hooks (and, for the LSTM's inner
layers, separate one-layer LSTMs with the same weights). Steps that are not logging steps run no
hook and record nothing. The report's figures are drawn from synthetic run directories.
"""

from __future__ import annotations

import copy
import json
import math
from functools import partial
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from scipy import stats
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

from analysis.dynamics import (
    SeedInterval,
    configurations,
    ffn_per_layer,
    load_dynamics,
    load_init,
    mean_over_seeds,
    write_dynamics,
    xiong_sentence,
    xiong_verdict,
)
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


# -- the measurement at initialisation -------------------------------------------------------------
def test_ffn_gradient_norms_at_init_match_hand_computation():
    """init_batches passes on the first batches, no step: each block's FFN second weight (the MLP's
    output Linear) gradient norm, against a copy of the net and plain cross-entropy by hand."""
    torch.manual_seed(0)
    module = ViTClassifier(
        optimizer=partial(torch.optim.SGD, lr=0.05), embed_dim=16, hidden_dim=32, num_heads=2, num_layers=3, norm="post"
    )
    reference = copy.deepcopy(module.net)
    x, y = torch.randn(STEPS * 8, 3, 32, 32), torch.randint(0, 10, (STEPS * 8,))
    dyn = TrainingDynamics(every_n_steps=EVERY, init_batches=2)
    _fit(module, TensorDataset(x, y), [dyn])
    assert [r["batch"] for r in dyn.init_records] == [0, 1]
    assert set(reference.ffn_output_weights()) == {"block0", "block1", "block2"}
    for k, record in enumerate(dyn.init_records):
        reference.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(reference(x[8 * k : 8 * k + 8]), y[8 * k : 8 * k + 8]).backward()
        for i, block in enumerate(reference.blocks):
            by_hand = block.mlp[3].weight.grad.norm()
            assert_close_rel(torch.tensor(record["ffn_grad_norm"][f"block{i}"]), by_hand, msg=f"batch {k} block{i}")
        whole = torch.cat([p.grad.flatten() for p in reference.blocks[1].parameters()]).norm()
        assert_close_rel(torch.tensor(record["grad_norm"]["block1"]), whole)
    for record in dyn.records:  # and on logging steps
        assert sorted(record["ffn_grad_norm"]) == ["block0", "block1", "block2"]


def _losses(init_batches: int) -> tuple[list[float], list[torch.Tensor]]:
    """A tiny ViT with dropout (it draws from the global RNG) trained 5 steps on the real seeded
    training loader; the loss of every step and the final weights."""
    from datamodules.sampling import make_loader

    pl.seed_everything(3, verbose=False)
    module = ViTClassifier(
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        embed_dim=16,
        hidden_dim=32,
        num_heads=2,
        num_layers=2,
        dropout=0.2,
    )
    data = TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))

    class Indexed(torch.utils.data.Dataset):  # the loader yields (index, augmentation seed) pairs
        def __len__(self):
            return len(data)

        def __getitem__(self, item):
            return data[item[0]]

    losses: list[float] = []

    class Keep(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=STEPS,
        callbacks=[TrainingDynamics(every_n_steps=2, init_batches=init_batches), Keep()],
    )
    loader = make_loader(Indexed(), train=True, batch_size=8, num_workers=0, pin_memory=False, seed=3)
    trainer.fit(module, loader)
    return losses, [p.detach().clone() for p in module.parameters()]


def test_measuring_at_init_does_not_change_training():
    off_losses, off_weights = _losses(0)
    on_losses, on_weights = _losses(3)
    assert len(on_losses) == STEPS and on_losses == off_losses  # bit for bit
    assert all(torch.equal(a, b) for a, b in zip(on_weights, off_weights))


# -- the report from synthetic runs ------------------------------------------------------------------
def _synthetic_run(
    root: Path, name: str, study_config: str, layers: int, norm: str, seed: int, ffn, lr: float = 3e-4, ratio=None
) -> Path:
    """A completed run (config.yaml + metrics.json + dynamics.jsonl) with known numbers: at
    initialisation ffn(batch, i) for block i over 4 batches; logged steps 0, 10, ..., 90 hold
    ffn(100 + step, i) and the update ratio ratio(step)."""
    import yaml

    run = root / name
    run.mkdir(parents=True)
    optimizer = {"adamw": "torch.optim.AdamW", "sgd": "torch.optim.SGD"}[name.split("_")[0] if "_" in name else "adamw"]
    config = {
        "task": "vit",
        "seed": seed,
        "optimizer": {"_target_": optimizer, "lr": lr},
        "model": {"num_layers": layers, "norm": norm},
        "trainer": {"max_epochs": 10},
        "study_config": study_config,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.json").write_text(
        json.dumps({"status": "completed", "task": "vit", "seed": seed, "experiment": {"study_config": study_config}})
    )
    blocks = [f"block{i}" for i in range(layers)]
    with (run / "dynamics.jsonl").open("w") as f:
        for k in range(4):
            f.write(
                json.dumps(
                    {
                        "phase": "init",
                        "batch": k,
                        "step": 0,
                        "ffn_grad_norm": {b: ffn(k, i) for i, b in enumerate(blocks)},
                    }
                )
                + "\n"
            )
        for step in range(0, 100, 10):
            r = ratio(step) if ratio else 1e-3
            record = {
                "step": step,
                "epoch": 0,
                "ffn_grad_norm": {b: ffn(100 + step, i) for i, b in enumerate(blocks)},
                "update_ratio": {**{b: r for b in blocks}, "all": r},
            }
            f.write(json.dumps(record) + "\n")
        f.write('{"step": 100, "grad_no')  # a torn last line (a killed run) is skipped
    return run


GROWTH = {1: 2.0, 2: 1.8, 3: 2.2}  # post-norm's factor per layer at init, per seed


def test_xiong_pattern_from_synthetic_seeds(tmp_path):
    from analysis import load_runs

    for seed, g in GROWTH.items():
        # post-norm grows g-fold per layer at init (batches differ by a constant factor), flat later
        _synthetic_run(
            tmp_path,
            f"post{seed}",
            "table2/7",
            6,
            "post",
            seed,
            lambda k, i, g=g: (1 + 0.1 * k) * g**i if k < 100 else 1.0,
        )
        # pre-norm shrinks slightly per layer
        _synthetic_run(tmp_path, f"pre{seed}", "table2/6", 6, "pre", seed, lambda k, i, s=seed: 0.97**i * s)
    frame = load_init(tmp_path / "post1")
    assert sorted(frame["batch"].unique()) == [0, 1, 2, 3]
    assert sorted(load_dynamics(tmp_path / "post1")["step"].unique()) == list(range(0, 100, 10))  # init not there
    assert ffn_per_layer(tmp_path / "post1", "init")["block3"] == pytest.approx(1.15 * 8)  # mean of 1, 1.1, 1.2, 1.3

    report = write_dynamics(load_runs(tmp_path), tmp_path / "report")
    post = next(v for k, v in report.summary.items() if k.startswith("post-norm"))
    slopes = [math.log(g) for g in GROWTH.values()]  # ln(norm) = const + i ln g exactly
    expected = stats.t.interval(0.95, 2, loc=np.mean(slopes), scale=stats.sem(slopes))
    got = post["init"]["slope"]
    assert got.n == 3 and got.mean == pytest.approx(np.mean(slopes), rel=1e-9)
    assert (got.low, got.high) == pytest.approx(expected, rel=1e-9)
    assert post["late"]["slope"].mean == pytest.approx(0.0, abs=1e-12)
    pre = next(v for k, v in report.summary.items() if k.startswith("pre-norm"))
    assert pre["init"]["slope"].mean == pytest.approx(math.log(0.97), rel=1e-9)
    (init, late) = report.summary["xiong"]
    assert init["verdict"] == "appears" and late["verdict"] == "does not appear"
    assert init["sentence"].startswith("Xiong et al.'s pattern (post-norm's gradients growing toward the output")
    assert "appears at initialisation" in report.markdown and "(n=3)" in report.markdown
    table = pd.read_csv(tmp_path / "report" / "dynamics_grad_norm_by_layer.csv")
    row = table[
        table["configuration"].str.startswith("post") & (table["when"] == "init") & (table["block"] == "block2")
    ]
    geo = math.exp(np.mean([math.log(1.15 * g**2) for g in GROWTH.values()]))  # geometric mean over seeds
    assert row["mean"].iloc[0] == pytest.approx(geo, rel=1e-9)
    image = matplotlib.image.imread(tmp_path / "report" / "dynamics_grad_norm_by_layer.png")
    assert image.shape[0] > 200 and image.shape[1] > 400


def test_verdict_and_sentence_logic():
    up, flat, down = (
        SeedInterval(3, 0.5, 0.3, 0.7),
        SeedInterval(3, 0.0, -0.02, 0.02),
        SeedInterval(3, -0.2, -0.3, -0.1),
    )
    assert xiong_verdict(flat, up) == "appears" and xiong_verdict(down, up) == "appears"
    assert xiong_verdict(up, up) == "does not appear"  # pre-norm grows too
    assert xiong_verdict(flat, down) == "does not appear"  # post-norm shrinks
    assert xiong_verdict(flat, SeedInterval(3, 0.1, -0.1, 0.3)) == "unclear"
    one = SeedInterval(1, 0.5, math.nan, math.nan)
    assert xiong_verdict(flat, one) == "not tested"
    sentence = xiong_sentence(flat, one)
    assert "is not tested: post-norm has fewer than two seeds" in sentence and "+0.500 (n=1, no interval)" in sentence
    assert "+0.500 [+0.300, +0.700] (n=3)" in xiong_sentence(flat, up)


def test_seeds_of_one_configuration_only(tmp_path):
    """Two learning rates of one study row are two configurations: two lines of n=1, never n=2;
    averaging them as seeds is refused."""
    from analysis import load_runs

    for lr in (3e-4, 1e-2):
        _synthetic_run(
            tmp_path, f"sgd_{lr}", "table2/3", 2, "pre", 1, lambda k, i: 1.0, lr=lr, ratio=lambda s, lr=lr: lr
        )
    runs = load_runs(tmp_path)
    groups = configurations(runs, "table2/3", {})
    assert [len(g) for g in groups] == [1, 1]
    with pytest.raises(ValueError, match="runs of 2 configurations .* cannot be averaged as seeds"):
        mean_over_seeds(runs)
    report = write_dynamics(runs, tmp_path / "report")
    labels = [k for k in report.summary if k.startswith("SGD")]
    assert sorted(labels) == [
        "SGD (table2/3, lr 0.0003, budget full, n=1)",
        "SGD (table2/3, lr 0.01, budget full, n=1)",
    ]
    assert report.summary[labels[1]]["median_update_ratio"] == pytest.approx(1e-2)


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
    init = load_init(run)  # at initialisation: the 3 batches of the epoch (debug=fast), 6 FFN matrices each
    assert sorted(init["batch"].unique()) == [0, 1, 2]
    assert len(init[init["metric"] == "ffn_grad_norm"]) == 3 * 6 and init["value"].gt(0).all()
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
    assert "## Training dynamics" in readme and "post-norm (table2/7, lr 0.0003, budget full, n=1)" in readme
    assert "Xiong et al.'s pattern: no pre-norm and post-norm configuration of one setting" in readme  # no verdict
    assert "no run with dynamics for table2/6" in readme
