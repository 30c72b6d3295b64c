"""The optimizer axis beyond the study: every conf/optimizer/*.yaml trains both models; parameter
groups (weight decay, Muon's split) cover each parameter once; Schedule-Free's train/eval modes
around validation, test and checkpoints; exact resume."""

from __future__ import annotations

import copy
import functools
import sys

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.language_model import LanguageModel, masked_nll
from lightning_modules.optim import MuonAdamW, has_modes, in_train_mode
from lightning_modules.vit_classifier import ViTClassifier
from lmvit.config import validate
from lmvit.errors import ConfigError
from tests.helpers import ROOT, assert_close_rel, find_runs, load_metrics, run_train

OPTIMIZERS = sorted(p.stem for p in (ROOT / "conf" / "optimizer").glob("*.yaml"))
TINY_VIT = dict(embed_dim=16, hidden_dim=32, num_heads=2, num_layers=2, patch_size=8)
TINY_LSTM = dict(vocab_size=40, embedding_size=16, hidden_size=16, num_layers=1)


def compose_with(*overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@functools.cache
def optimizer_factory(name: str, model: str = "vit"):
    """The Hydra partial of conf/optimizer/<name>.yaml with the model's learning rate."""
    return instantiate(compose_with(f"optimizer={name}", f"model={model}").optimizer)


def tiny(model: str, name: str, **kwargs):
    torch.manual_seed(0)
    if model == "vit":
        return ViTClassifier(optimizer=optimizer_factory(name, "vit"), **TINY_VIT, **kwargs)
    return LanguageModel(optimizer=optimizer_factory(name, "lstm"), **TINY_LSTM, **kwargs)


def fixed_batch(model: str):
    g = torch.Generator().manual_seed(1)
    if model == "vit":
        return torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    tokens = torch.randint(0, TINY_LSTM["vocab_size"], (4, 13), generator=g)
    return tokens[:, :-1], tokens[:, 1:], torch.ones(4, 12)


def batch_loss(module, model: str, batch) -> torch.Tensor:
    if model == "vit":
        images, labels = batch
        return F.cross_entropy(module.net(images), labels)
    source, target, mask = batch
    total, count = masked_nll(module.net(source), target, mask)
    return total / count


def test_the_optimizers_are_the_configs_of_conf_optimizer():
    """One yaml file adds an optimizer: the list is derived from conf/optimizer/, never written."""
    assert {"adam", "adamw", "sgd", "momentum"} <= set(OPTIMIZERS)  # the study's four


ADAMAX = """\
_target_: torch.optim.Adamax
_partial_: true
lr: ???
lr_scale: 2.0
weight_decay: 5e-4
"""


def test_an_optimizer_is_added_by_one_yaml_file(tmp_path, data_dir):
    """docs/adding-an-optimizer.md's example, added to a copy of conf/: with that one file it is in
    every derived list, the comparison preset labels it, and it trains with the model's lr x lr_scale."""
    import shutil

    from analysis.tuning import optimizer_names

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "optimizer" / "adamax.yaml").write_text(ADAMAX)
    assert "adamax" in optimizer_names(conf) and "adamax" not in OPTIMIZERS
    assert ADAMAX in (ROOT / "docs" / "adding-an-optimizer.md").read_text()  # the doc shows this file

    with initialize_config_dir(str(conf), version_base="1.3"):
        overrides = ["experiment=optimizers_vit", "optimizer=adamax", f"data.data_dir={data_dir}"]
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    assert cfg.label.endswith("adamax")
    validate(cfg)
    torch.manual_seed(0)
    module = ViTClassifier(optimizer=instantiate(cfg.optimizer), **TINY_VIT)
    optimizer = module.configure_optimizers()
    assert type(optimizer) is torch.optim.Adamax
    assert all(g["lr"] == pytest.approx(3e-4 * 2.0, rel=1e-9) for g in optimizer.param_groups)  # the ViT's lr
    batch = fixed_batch("vit")
    with torch.no_grad():
        first = batch_loss(module, "vit", batch).item()
    for _ in range(8):
        optimizer.zero_grad()
        batch_loss(module, "vit", batch).backward()
        optimizer.step()
    with torch.no_grad():
        assert batch_loss(module, "vit", batch).item() < first


@pytest.mark.parametrize("model", ["vit", "lstm"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_config_lowers_the_loss_on_a_fixed_batch(name, model):
    module = tiny(model, name, no_weight_decay=True)
    optimizer = module.configure_optimizers()
    if has_modes(optimizer):
        optimizer.train()
    batch = fixed_batch(model)
    before = [p.detach().clone() for p in module.parameters()]
    with torch.no_grad():
        first = batch_loss(module, model, batch).item()
    for _ in range(8):
        optimizer.zero_grad()
        batch_loss(module, model, batch).backward()
        optimizer.step()
    if has_modes(optimizer):
        optimizer.eval()  # evaluate Schedule-Free's average, as validation does
    with torch.no_grad():
        last = batch_loss(module, model, batch).item()
    assert last < first, f"{name} on {model}: loss {first} -> {last}"
    moved = [not torch.equal(a, b) for a, b in zip(before, module.parameters())]
    assert all(moved), f"{name} left some parameters unchanged"


def test_lr_scale_multiplies_the_models_learning_rate():
    expected = {
        "lion": 0.3,
        "schedulefree_adamw": 2.5,
        "soap": 3.0,
        "adafactor": 10.0,
        "nadam": 2.0,
        "radam": 1.0,
        "muon": 1.0,
        "adamw": 1.0,
    }
    for name, scale in expected.items():
        for model, lr in (("vit", 3e-4), ("lstm", 1e-3)):
            optimizer = tiny(model, name).configure_optimizers()
            for group in optimizer.param_groups:
                assert group["lr"] == pytest.approx(lr * scale), name


def _names(module, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in module.net.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("model", ["vit", "lstm"])
@pytest.mark.parametrize("no_weight_decay", [False, True])
def test_muon_gets_only_hidden_matrices_and_every_parameter_once(model, no_weight_decay):
    module = tiny(model, "muon", no_weight_decay=no_weight_decay)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, MuonAdamW)
    listed = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(listed) == len({id(p) for p in listed}) == len(list(module.parameters()))
    muon = _names(module, [p for g in optimizer._muon.param_groups for p in g["params"]])
    adamw = _names(module, [p for g in optimizer._adamw.param_groups for p in g["params"]])
    net_names = {n for n, _ in module.net.named_parameters()}
    assert muon | adamw == net_names and not muon & adamw
    params = dict(module.net.named_parameters())
    assert all(params[n].ndim == 2 for n in muon)
    if model == "vit":  # the blocks' attention and MLP matrices; patch embedding and head are AdamW's
        expected = {n for n, p in params.items() if n.startswith("blocks.") and p.ndim == 2}
        assert {"cls_token", "pos_embed", "patch_embed.weight", "head.1.weight"} <= adamw
    else:  # the LSTM's stacked gate matrices and the projection; the tied embedding is AdamW's
        expected = {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "projection.0.weight"}
        assert "embedding.weight" in adamw
    assert muon == expected
    assert all(g["use_muon"] for g in optimizer._muon.param_groups)
    assert not any(g["use_muon"] for g in optimizer._adamw.param_groups)


@pytest.mark.parametrize("name", ["adamw", "muon", "lion"])
def test_no_weight_decay_excludes_norms_biases_cls_and_pos_embed(name):
    module = tiny("vit", name, no_weight_decay=True)
    optimizer = module.configure_optimizers()
    decay = optimizer_factory(name).keywords["weight_decay"]
    listed = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(listed) == len({id(p) for p in listed}) == len(list(module.parameters()))
    zero = _names(module, [p for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]])
    rest = _names(module, [p for g in optimizer.param_groups if g["weight_decay"] == decay for p in g["params"]])
    expected_zero = {n for n, p in module.net.named_parameters() if p.ndim == 1 or n in ("cls_token", "pos_embed")}
    assert zero == expected_zero
    assert {"blocks.0.ln1.weight", "blocks.0.ln1.bias", "head.0.weight", "head.1.bias"} <= zero
    assert rest == {n for n, _ in module.net.named_parameters()} - expected_zero
    assert decay > 0

    off = tiny("vit", name).configure_optimizers()  # the study: every parameter decays
    assert {g["weight_decay"] for g in off.param_groups} == {decay}


def test_no_weight_decay_for_the_lstm_and_frozen_embeddings_left_out():
    module = tiny("lstm", "adamw", no_weight_decay=True, freeze_embeddings=True)
    optimizer = module.configure_optimizers()
    zero = _names(module, [p for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]])
    assert zero == {"lstm.bias_ih_l0", "lstm.bias_hh_l0", "projection.0.bias"}
    listed = _names(module, [p for g in optimizer.param_groups for p in g["params"]])
    assert "embedding.weight" not in listed  # frozen: not optimized at all
    assert listed == {n for n, p in module.net.named_parameters() if p.requires_grad}


def test_muon_adamw_checkpoint_resumes_exactly_and_both_parts_follow_the_schedule():
    from lightning_modules.schedules import cosine_with_warmup

    batch = fixed_batch("vit")

    def run(steps, module, optimizer, scheduler):
        for _ in range(steps):
            optimizer.zero_grad()
            batch_loss(module, "vit", batch).backward()
            optimizer.step()
            scheduler.step()

    a = tiny("vit", "muon", no_weight_decay=True)
    opt_a = a.configure_optimizers()
    sched_a = cosine_with_warmup(opt_a, total_steps=10, warmup_fraction=0.2)
    run(4, a, opt_a, sched_a)
    lrs = {g["lr"] for g in opt_a.param_groups}
    assert len(lrs) == 1 and lrs != {3e-4}  # one schedule for the Muon and the AdamW groups
    assert opt_a._muon.param_groups[0]["lr"] == opt_a._adamw.param_groups[0]["lr"] == lrs.pop()
    saved = {k: v.clone() for k, v in a.state_dict().items()}
    opt_state, sched_state = copy.deepcopy(opt_a.state_dict()), copy.deepcopy(sched_a.state_dict())
    assert any("momentum_buffer" in s for s in opt_state["state"].values())  # Muon's state is saved
    run(4, a, opt_a, sched_a)

    b = tiny("vit", "muon", no_weight_decay=True)
    b.load_state_dict(saved)
    opt_b = b.configure_optimizers()
    sched_b = cosine_with_warmup(opt_b, total_steps=10, warmup_fraction=0.2)
    opt_b.load_state_dict(opt_state)
    sched_b.load_state_dict(sched_state)
    run(4, b, opt_b, sched_b)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name


# -- Schedule-Free: modes around validation, test and checkpoints ---------------------------------
class ModeSpy(pl.Callback):
    """Records the optimizer's mode at each optimizer step, evaluation batch and checkpoint."""

    def __init__(self) -> None:
        self.seen: dict[str, list[bool]] = {"step": [], "val": [], "test": [], "checkpoint": []}

    def _mode(self, trainer) -> bool:
        (optimizer,) = trainer.optimizers
        return in_train_mode(optimizer)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.seen["step"].append(self._mode(trainer))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.seen["val"].append(self._mode(trainer))

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.seen["test"].append(self._mode(trainer))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.seen["checkpoint"].append(self._mode(trainer))
        assert all(not g["train_mode"] for g in checkpoint["optimizer_states"][0]["param_groups"])
        live = pl_module.state_dict()  # the saved weights are the live ones, in eval mode (x)
        assert all(torch.equal(v, live[k]) for k, v in checkpoint["state_dict"].items())


def test_schedulefree_is_in_eval_mode_for_validation_test_and_every_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(48, 3, 32, 32, generator=g), torch.randint(0, 10, (48,), generator=g))
    loader = functools.partial(DataLoader, data, batch_size=8)
    module = tiny("vit", "schedulefree_adamw")
    spy = ModeSpy()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, save_last=True, monitor=None)
    trainer = pl.Trainer(
        max_epochs=2,
        val_check_interval=3,
        callbacks=[spy, checkpoints],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, train_dataloaders=loader(shuffle=True), val_dataloaders=loader())
    (optimizer,) = trainer.optimizers
    assert not in_train_mode(optimizer)  # fit ends on the evaluation weights
    trainer.test(module, dataloaders=loader())
    assert len(spy.seen["step"]) == 12 and all(spy.seen["step"])
    # sanity check + 2 validations per epoch (every 3 of 6 batches), 6 batches each; the test
    assert len(spy.seen["val"]) == 2 + 2 * 2 * 6 and not any(spy.seen["val"])
    assert len(spy.seen["test"]) == 6 and not any(spy.seen["test"])
    assert len(spy.seen["checkpoint"]) >= 3 and not any(spy.seen["checkpoint"])
    # the last checkpoint (step 12) gives the evaluation model without an optimizer; the live
    # model went back to train mode after it and to eval mode again for the last validation, a
    # round trip equal up to rounding
    reloaded = ViTClassifier.load_from_checkpoint(tmp_path / "last.ckpt")
    for (name, p), q in zip(module.named_parameters(), reloaded.parameters()):
        assert_close_rel(q, p.detach(), rtol=1e-5, msg=name)


# -- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["optimizer=lion", "optimizer.lr_scale=0"], "optimizer.lr_scale=0: must be a number > 0"),
        (["optimizer=lion", "optimizer.betas=[0.9,1.0]"], "optimizer.betas=[0.9, 1.0]: must be two numbers"),
        (["optimizer=muon", "optimizer.ns_steps=0"], "optimizer.ns_steps=0: must be an integer >= 1"),
        (["optimizer=muon", "optimizer.adjust_lr_fn=bogus"], "optimizer.adjust_lr_fn='bogus'"),
        (["optimizer=soap", "optimizer.precondition_frequency=0"], "optimizer.precondition_frequency=0"),
        (["optimizer=schedulefree_adamw", "optimizer.warmup_steps=-1"], "optimizer.warmup_steps=-1"),
        (["optimizer=adafactor", "optimizer.eps=[null,-1]"], "optimizer.eps=[None, -1]"),
        (["model.no_weight_decay=maybe"], "model.no_weight_decay='maybe': must be true or false"),
    ],
)
def test_bad_optimizer_settings_get_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        validate(compose_with(*overrides))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_missing_optional_package_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lion_pytorch", None)  # as if lion-pytorch were not installed
    with pytest.raises(ConfigError) as info:
        validate(compose_with("optimizer=lion"))
    message = str(info.value)
    assert "needs the package lion-pytorch, which is not installed: pip install -e '.[optim]'" in message
    assert "\n" not in message


# -- a Schedule-Free run killed mid-epoch and resumed ----------------------------------------------
SMALL = [
    "optimizer=schedulefree_adamw",
    "model.num_layers=1",
    "model.embed_dim=32",
    "model.hidden_dim=64",
    "model.num_heads=2",
    "model.dropout=0.1",
    "data.train_subset=160",
    "data.batch_size=16",
    "trainer.max_epochs=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.deterministic=true",
    "callbacks.progress_bar=null",
    "callbacks.periodic_checkpoint.every_n_train_steps=4",
    "data.num_workers=0",
]


def comparable(metrics: dict) -> dict:
    """The numbers of a metrics.json that must not depend on timing."""
    history = [{k: v for k, v in row.items() if not k.startswith(("time/", "memory/"))} for row in metrics["history"]]
    return {k: metrics[k] for k in ("final", "best", "test", "epochs")} | {"history": history}


@pytest.mark.slow
def test_schedulefree_run_killed_mid_epoch_and_resumed_matches_uninterrupted_run(tmp_path, data_dir):
    run_train(*SMALL, log_dir=tmp_path / "a", data_dir=data_dir)
    (uninterrupted,) = find_runs(tmp_path / "a")
    # step 14 is batch 4 of epoch 2; the last checkpoint on disk is step 12 (mid-epoch, eval mode)
    kill = ["+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=14"]
    proc = run_train(*SMALL, *kill, log_dir=tmp_path / "b", data_dir=data_dir, check=False)
    assert proc.returncode == -9, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "b" / "vit" / "runs").iterdir()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (ckpt["global_step"], ckpt["epoch"]) == (12, 1)
    assert not ckpt["optimizer_states"][0]["param_groups"][0]["train_mode"]
    run_train(f"resume={run_dir}", "++callbacks.kill.step=-1", log_dir=tmp_path / "b")
    resumed, reference = load_metrics(run_dir), load_metrics(uninterrupted)
    assert resumed["status"] == "completed"
    assert comparable(resumed) == comparable(reference)
    final_a = torch.load(uninterrupted / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    final_b = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    for key, value in final_a["state_dict"].items():  # bit for bit
        assert torch.equal(final_b["state_dict"][key], value), key


# -- presets: Table 2 / Table 1 configs 1-4 extended to every optimizer ---------------------------
@pytest.mark.parametrize("task,table,layers", [("vit", "table2", 2), ("lstm", "table1", 1)])
def test_one_optimizer_preset_per_task_extends_the_study_configs_1_to_4(task, table, layers):
    from hydra.core.hydra_config import HydraConfig

    study = {"adam": 1, "adamw": 2, "sgd": 3, "momentum": 4}
    labels = set()
    for name in OPTIMIZERS:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            overrides = [f"experiment=optimizers_{task}", f"optimizer={name}"]
            HydraConfig.instance().set_config(compose("train", overrides=overrides, return_hydra_config=True))
            cfg = compose("train", overrides=overrides)
        assert cfg.task == task and cfg.model.num_layers == layers and cfg.trainer.max_epochs == 10
        assert cfg.optimizer == compose_with(f"optimizer={name}", f"model={task}").optimizer
        assert cfg.study_config is None and cfg.label.endswith(f" {name}")  # the label names the optimizer
        if name in study:  # the study's settings: the same model, optimizer and budget as its preset
            (same,) = (ROOT / "conf" / "experiment").glob(f"{table}_{study[name]}_*.yaml")
            reference = compose_with(f"experiment={same.stem}")
            assert cfg.model == reference.model and cfg.optimizer == reference.optimizer
            assert cfg.trainer == reference.trainer and cfg.data == reference.data
        labels.add(cfg.label)
    assert len(labels) == len(OPTIMIZERS)
