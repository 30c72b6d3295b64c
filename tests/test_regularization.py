"""Regularisation beyond the study: label smoothing, stochastic depth, attention dropout, LSTM
dropout, and the presets that combine them (vit_strong, vit_strong_100ep, lstm_regularized)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lightning_modules.language_model import LanguageModel
from lightning_modules.nets.lstm import LSTMLanguageModel
from lightning_modules.nets.vit import Block, DropPath, VisionTransformer
from lightning_modules.vit_classifier import ViTClassifier
from tests.helpers import ROOT, assert_close_rel, find_runs, load_metrics, run_train

TINY = dict(embed_dim=32, hidden_dim=32, num_heads=4, num_layers=2)


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(10, (n,), generator=g)


# -- label smoothing and soft targets --------------------------------------------------------------
def test_label_smoothing_loss_equals_the_formula_and_accuracy_counts_true_labels():
    torch.manual_seed(0)
    eps = 0.1
    module = ViTClassifier(label_smoothing=eps, **TINY).eval()
    images, labels = _batch()
    logits = module.net(images)
    log_p = F.log_softmax(logits, dim=-1)
    smoothed = F.one_hot(labels, 10) * (1 - eps) + eps / 10  # (1 - eps) one-hot + eps uniform
    expected = -(smoothed * log_p).sum(dim=1).mean()
    assert_close_rel(module.step((images, labels), "train"), expected)
    # validation reports the plain cross-entropy; both count accuracy against the true labels
    assert_close_rel(module.step((images, labels), "val"), -log_p[torch.arange(16), labels].mean())
    true_acc = (logits.argmax(-1) == labels).float().mean()
    assert_close_rel(module.metrics["train"]["acc"].compute(), true_acc)
    assert_close_rel(module.metrics["val"]["acc"].compute(), true_acc)


def test_soft_targets_give_the_cross_entropy_with_the_mixture():
    torch.manual_seed(0)
    module = ViTClassifier(**TINY).eval()
    images, labels = _batch()
    lam = 0.7
    targets = F.one_hot(labels, 10) * lam + F.one_hot(labels.roll(1, 0), 10) * (1 - lam)
    log_p = F.log_softmax(module.net(images), dim=-1)
    expected = -(lam * log_p[torch.arange(16), labels] + (1 - lam) * log_p[torch.arange(16), labels.roll(1, 0)])
    assert_close_rel(module.step((images, targets.float()), "train"), expected.mean())
    # accuracy of a mixed batch counts the dominant class (lam > 1/2: the image's own label)
    assert_close_rel(module.metrics["train"]["acc"].compute(), (log_p.argmax(-1) == labels).float().mean())


# -- stochastic depth ------------------------------------------------------------------------------
def test_drop_path_keeps_the_expected_value_and_is_off_in_eval():
    torch.manual_seed(0)
    p = 0.3
    drop = DropPath(p)
    x = torch.randn(20_000, 4, 8).abs() + 1.0
    y = drop(x)
    kept = (y != 0).flatten(1)
    assert (kept.all(dim=1) | (~kept).all(dim=1)).all()  # whole samples are dropped or kept
    keep_rate = kept[:, 0].float().mean()
    assert abs(keep_rate - (1 - p)) < 0.02
    assert_close_rel(y[kept[:, 0]], x[kept[:, 0]] / (1 - p))  # kept samples scaled by 1 / (1 - p)
    assert_close_rel(y.mean(), x.mean(), rtol=0.02)  # the expected value is unchanged
    drop.eval()
    assert torch.equal(drop(x), x)


def test_drop_path_rate_grows_linearly_with_depth_and_block_uses_it():
    net = VisionTransformer(num_layers=5, drop_path=0.2, **{k: v for k, v in TINY.items() if k != "num_layers"})
    rates = [block.drop_path.p for block in net.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    # a block whose branches are always dropped is the identity (pre-norm), in training only
    block = Block(32, 32, 4, drop_path=0.0)
    block.drop_path.p = 0.999999
    x = torch.randn(2, 5, 32)
    torch.manual_seed(0)
    assert torch.equal(block.train()(x), x)
    assert not torch.equal(block.eval()(x), x)


def test_attention_dropout_reaches_the_attention_weights():
    net = VisionTransformer(attn_dropout=0.5, dropout=0.0, **TINY)
    for block in net.blocks:
        assert block.attn.dropout == 0.5 and block.attn.attn_dropout.p == 0.5
        assert all(m.p == 0.0 for m in block.mlp if isinstance(m, torch.nn.Dropout))
    images, _ = _batch(2)
    torch.manual_seed(0)
    a = net.train()(images)
    b = net(images)
    assert not torch.equal(a, b)  # the only randomness: dropout on the attention weights
    net.eval()
    assert torch.equal(net(images), net(images))


# -- LSTM dropout ----------------------------------------------------------------------------------
def test_lstm_dropout_is_off_by_default_and_acts_only_in_training():
    tokens = torch.randint(50, (2, 7))
    torch.manual_seed(0)
    study = LSTMLanguageModel(50, embedding_size=16, hidden_size=8)
    torch.manual_seed(0)
    regularized = LSTMLanguageModel(50, embedding_size=16, hidden_size=8, embedding_dropout=0.3, output_dropout=0.4)
    assert study.embedding_dropout.p == study.output_dropout.p == 0.0
    assert regularized.embedding_dropout.p == 0.3 and regularized.output_dropout.p == 0.4
    assert sum(p.numel() for p in study.parameters()) == sum(p.numel() for p in regularized.parameters())
    study.train()
    regularized.train()
    assert torch.equal(study(tokens), study(tokens))  # no dropout in the study's model
    assert not torch.equal(regularized(tokens), regularized(tokens))
    regularized.eval()
    torch.testing.assert_close(regularized(tokens), study.eval()(tokens), rtol=0, atol=0)


def _loss_falls(module, batch, steps=15, lr=3e-3):
    module.train()
    opt = torch.optim.Adam(module.net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = module.step(batch, "train")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_each_vit_option_trains():
    """Loss falls on a fixed batch with label smoothing, soft (mixed) targets, drop path and
    attention dropout on: the options leave the model trainable."""
    torch.manual_seed(0)
    images, labels = _batch(16)
    targets = F.one_hot(labels, 10) * 0.7 + F.one_hot(labels.roll(1, 0), 10) * 0.3
    module = ViTClassifier(label_smoothing=0.1, drop_path=0.1, attn_dropout=0.1, dropout=0.1, **TINY)
    losses = _loss_falls(module, (images, targets.float()))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


def test_regularized_lstm_trains():
    torch.manual_seed(0)
    module = LanguageModel(vocab_size=40, embedding_size=16, hidden_size=16, embedding_dropout=0.25, output_dropout=0.4)
    tokens = torch.randint(40, (8, 13))
    batch = (tokens[:, :-1], tokens[:, 1:], torch.ones(8, 12))
    losses = _loss_falls(module, batch, steps=40, lr=1e-2)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


# -- presets ---------------------------------------------------------------------------------------
def _compose(*overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _build_vit(cfg) -> ViTClassifier:
    # model.no_weight_decay (parameter groups) belongs to the optimizers work: not a net argument
    kwargs = {k: v for k, v in cfg.model.items() if k not in ("_target_", "optimizer", "scheduler", "no_weight_decay")}
    return ViTClassifier(**kwargs)


def test_vit_strong_is_the_anchor_recipe():
    cfg = _compose("experiment=vit_strong")
    m = cfg.model
    assert (m.embed_dim, m.hidden_dim, m.num_heads, m.num_layers, m.patch_size) == (384, 384, 12, 7, 4)
    assert m.label_smoothing == 0.1 and m.no_weight_decay is True and m.dropout == 0.0
    assert cfg.data.augment == "autoaugment" and cfg.data.batch_size == 128
    assert cfg.trainer.max_epochs == 200 and cfg.callbacks.ema.decay == 0.9995
    assert cfg.scheduler.warmup_fraction * 200 == pytest.approx(5)  # 5 warm-up epochs
    assert cfg.optimizer.lr * cfg.scheduler.min_lr_ratio == pytest.approx(1e-5)
    optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(5e-5)
    params = _build_vit(cfg).parameter_counts()["learnable"]
    assert 6.2e6 < params < 6.4e6  # the anchor's 6.3M
    assert cfg.study_config == "beyond/vit_strong"


def test_vit_strong_100ep_and_lstm_regularized():
    short = _compose("experiment=vit_strong_100ep")
    assert short.trainer.max_epochs == 100 and short.scheduler.warmup_fraction * 100 == pytest.approx(5)
    assert short.model.embed_dim == 384 and short.data.augment == "autoaugment"
    lstm = _compose("experiment=lstm_regularized")
    assert lstm.model.embedding_dropout == 0.25 and lstm.model.output_dropout == 0.4
    assert lstm.trainer.gradient_clip_val == 1.0 and lstm.trainer.max_epochs == 10
    assert lstm.scheduler._target_.endswith("cosine_with_warmup")
    assert lstm.study_config == "beyond/lstm_regularized"  # not reported as the study's row 2
    module = instantiate(lstm.model, vocab_size=50)
    assert module.net.embedding_dropout.p == 0.25 and module.net.output_dropout.p == 0.4


@pytest.mark.slow
def test_short_run_with_every_option_lowers_the_loss(tmp_path, data_dir):
    """One train.py run, tiny model, 192 images, every new option on: wired end to end, it trains
    (the training loss falls) and the EMA is validated beside the net."""
    run_train(
        "model.num_layers=2",
        "model.embed_dim=32",
        "model.hidden_dim=64",
        "model.num_heads=4",
        "model.label_smoothing=0.1",
        "model.drop_path=0.1",
        "model.attn_dropout=0.1",
        "data.augment=trivialaugment",
        "data.random_erasing=0.25",
        "data.mixup=0.8",
        "data.cutmix=1.0",
        "callbacks.ema.decay=0.9",
        "scheduler=cosine",
        "trainer.gradient_clip_val=1.0",
        "optimizer.lr=2e-3",
        "data.train_subset=192",
        "data.batch_size=32",
        "data.num_workers=0",
        "trainer.max_epochs=3",
        "trainer.limit_val_batches=2",
        "trainer.num_sanity_val_steps=0",
        "data.val_size=512",
        "callbacks.progress_bar=null",
        "test=false",
        log_dir=tmp_path,
        data_dir=data_dir,
    )
    (run,) = find_runs(tmp_path)
    history = load_metrics(run)["history"]
    assert len(history) == 3
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert {"val/acc_ema", "val/loss_ema"} <= set(history[-1])
