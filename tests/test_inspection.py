"""Looking inside trained models: attention statistics and rollout against hand computations, the
inspection callbacks in a real (tiny) fit on CIFAR-10 read back from TensorBoard's event files and
metrics.json, and seeded sampling from the LSTM."""

from __future__ import annotations

import json
import logging
import math

import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import IMAGES, TENSORS, EventAccumulator

from datamodules.cifar10 import CIFAR10DataModule
from datamodules.tokenizers import WordTokenizer
from lightning_modules.attention_stats import attention_entropy, attention_rollout, mean_attention_distance
from lightning_modules.callbacks.inspection import AttentionInspection, ClassInspection
from lightning_modules.callbacks.run_summary import RunSummary
from lightning_modules.callbacks.text_samples import TextSamples
from lightning_modules.generation import TextGenerator, sample_tokens
from lightning_modules.nets.attention import MultiHeadAttention
from lightning_modules.nets.lstm import LSTMLanguageModel
from lightning_modules.nets.vit import VisionTransformer
from lightning_modules.tensorboard import TensorBoardLogger
from lightning_modules.vit_classifier import ViTClassifier
from tests.helpers import assert_close_rel

TINY_VIT = dict(embed_dim=16, hidden_dim=16, num_heads=2, num_layers=2)


@pytest.fixture(scope="module")
def attention():
    torch.manual_seed(0)
    net = VisionTransformer(**TINY_VIT).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        _, weights = net(images, return_attention=True)
    return net, weights


def test_attention_maps_of_each_layer_sum_to_one_over_keys(attention):
    net, weights = attention
    assert len(weights) == TINY_VIT["num_layers"]
    for w in weights:
        assert w.shape == (3, TINY_VIT["num_heads"], 65, 65)
        assert (w >= 0).all()
        assert_close_rel(w.sum(-1), torch.ones(w.shape[:-1]))
        assert_close_rel(w.mean(dim=1).sum(-1), torch.ones(3, 65))  # the mean over heads drawn per layer


def test_rollout_is_a_distribution_over_patches_equal_to_the_hand_product(attention):
    _, weights = attention
    rollout = attention_rollout(weights)
    assert rollout.shape == (3, 64) and (rollout >= 0).all()
    assert_close_rel(rollout.sum(-1), torch.ones(3))
    # independently: per image, explicit loops over layers with the residual identity
    for b in range(3):
        product = torch.eye(65, dtype=torch.float64)
        for w in weights:
            a = w[b].double().mean(0)
            a = (a + torch.eye(65, dtype=torch.float64)) / 2
            a = a / a.sum(1, keepdim=True)
            product = a @ product
        expected = product[0, 1:] / product[0, 1:].sum()
        assert_close_rel(rollout[b].double(), expected)


def test_entropy_of_uniform_and_one_hot_attention():
    tokens = 17
    uniform = torch.full((2, 3, tokens, tokens), 1 / tokens)
    assert_close_rel(attention_entropy(uniform), torch.full((3,), math.log(tokens)))
    one_hot = torch.eye(tokens).expand(2, 3, tokens, tokens)
    assert attention_entropy(one_hot).abs().max() < 1e-6


def test_mean_attention_distance_in_pixels_against_brute_force():
    torch.manual_seed(1)
    grid, patch = 3, 4
    w = torch.rand(2, 2, grid * grid + 1, grid * grid + 1).softmax(-1)
    expected = torch.zeros(2)
    for h in range(2):
        total = 0.0
        for b in range(2):
            for q in range(grid * grid):
                row = w[b, h, q + 1, 1:]
                row = row / row.sum()
                for k in range(grid * grid):
                    dy, dx = (q // grid - k // grid) * patch, (q % grid - k % grid) * patch
                    total += row[k].item() * math.hypot(dy, dx)
        expected[h] = total / (2 * grid * grid)
    assert_close_rel(mean_attention_distance(w, patch), expected)
    # attending only to itself: distance 0
    assert mean_attention_distance(torch.eye(10).expand(1, 1, 10, 10), patch).abs().max() < 1e-6


def _events(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={IMAGES: 0, TENSORS: 0, "scalars": 0})
    acc.Reload()
    return acc


def test_vit_inspection_in_a_real_fit(data_dir, tmp_path, monkeypatch):
    """Tiny ViT (sdpa) on 40 real validation images: the confusion matrix counts every one and its
    diagonal / total is the logged accuracy; per-class accuracy lands in metrics.json; images and
    attention scalars are in the event files; only the inspection batch takes the explicit path."""
    calls = []
    forward = MultiHeadAttention.forward

    def spy(self, x, return_weights=False):
        calls.append(return_weights)
        return forward(self, x, return_weights=return_weights)

    monkeypatch.setattr(MultiHeadAttention, "forward", spy)
    pl.seed_everything(0)
    dm = CIFAR10DataModule(str(data_dir), batch_size=16, num_workers=0, val_size=40, train_subset=32, pin_memory=False)
    model = ViTClassifier(optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), attention="sdpa", **TINY_VIT)
    summary = RunSummary(str(tmp_path / "metrics.json"), task="vit", monitor="val/acc")
    inspect = AttentionInspection(every_n_epochs=1, num_images=4)
    classes = ClassInspection(every_n_epochs=1, num_misclassified=5)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        num_sanity_val_steps=1,
        accelerator="cpu",
        logger=TensorBoardLogger(str(tmp_path), name="tb", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[inspect, classes, TextSamples(), summary],
    )
    trainer.fit(model, datamodule=dm)

    # sanity check + 3 validation batches + 2 training steps: fused path; one inspection: explicit
    assert calls.count(True) == TINY_VIT["num_layers"]
    matrix = torch.tensor(json.loads((tmp_path / "metrics.json").read_text())["per_class"]["val/confusion"])
    assert matrix.sum() == 40  # every validation image, sanity-check batch not counted
    val_acc = trainer.callback_metrics["val/acc"]
    assert_close_rel(matrix.diag().sum() / matrix.sum(), val_acc.float())
    per_class = json.loads((tmp_path / "metrics.json").read_text())["per_class"]
    counts = matrix.sum(1)
    for i, (name, acc) in enumerate(per_class["val/acc"].items()):
        assert per_class["val/count"][name] == counts[i]
        assert acc is None if counts[i] == 0 else acc == pytest.approx(matrix[i, i].item() / counts[i].item())
    assert list(per_class["val/acc"])[:3] == ["airplane", "automobile", "bird"]

    events = _events(tmp_path / "tb")
    tags = events.Tags()
    expected = {"attention/layers", "attention/rollout", "confusion/matrix", "confusion/misclassified"}
    assert expected <= set(tags["images"])
    assert not [t for t in tags["tensors"] if t.startswith("samples/")]  # TextSamples: nothing for the ViT
    # the logged statistics are those of the fixed batch (the first validation images)
    result = inspect.inspect(model.net, inspect.images)
    for layer in (1, 2):
        logged = events.Scalars(f"attention_distance/layer{layer}")[-1].value
        assert logged == pytest.approx(result["distance"][layer - 1].mean().item(), rel=1e-5)
        assert 0 < logged < 32 * math.sqrt(2)
        entropy = events.Scalars(f"attention_entropy/layer{layer}_head1")[-1].value
        assert 0 < entropy <= math.log(65) + 1e-5
    assert inspect.images.shape == (4, 3, 32, 32)
    assert_close_rel(inspect.images, next(iter(dm.val_dataloader()))[0][:4])


def test_sampling_is_seeded_and_steps_equal_the_full_forward():
    torch.manual_seed(0)
    net = LSTMLanguageModel(50, embedding_size=8, hidden_size=8).eval()
    context = [3, 1, 4]
    a = sample_tokens(net, context, 12, temperature=1.0, top_k=10, seed=7)
    assert a == sample_tokens(net, context, 12, temperature=1.0, top_k=10, seed=7)
    assert a != sample_tokens(net, context, 12, temperature=1.0, top_k=10, seed=8)
    greedy = sample_tokens(net, context, 6, temperature=0, seed=0)
    with torch.no_grad():  # stepping with the carried state = the net's forward on the whole sequence
        for i, token in enumerate(greedy):
            logits = net(torch.tensor([context + greedy[:i]]))[0, -1]
            assert token == int(logits.argmax())
    top1 = sample_tokens(net, context, 6, temperature=5.0, top_k=1, seed=3)
    assert top1 == greedy  # top_k=1 leaves only the most likely token


def test_prompt_words_outside_the_vocabulary_become_unk_said_once(caplog):
    tokenizer = WordTokenizer.from_lines(["the history of the world"])
    generator = TextGenerator(LSTMLanguageModel(tokenizer.vocab_size, embedding_size=4, hidden_size=4), tokenizer)
    with caplog.at_level(logging.WARNING):
        ids, unknown = generator.encode_prompt("the zork of zork")
        first = generator.generate("the zork of zork", max_tokens=3, seed=1)
        second = generator.generate("the zork of zork", max_tokens=3, seed=1)
    assert ids == [tokenizer.index["the"], tokenizer.unk_id, tokenizer.index["of"], tokenizer.unk_id]
    assert unknown == ["zork"] and first.text == second.text and len(first.ids) == 3
    assert sum("zork" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    "override, allowed",
    [
        ("callbacks.attention_inspection.every_n_epochs=0", "an integer >= 1"),
        ("callbacks.class_inspection.num_misclassified=-1", "an integer >= 0"),
        ("callbacks.text_samples.temperature=-0.5", "a number >= 0"),
        ("callbacks.text_samples.top_k=0", "an integer >= 1"),
    ],
)
def test_bad_callback_settings_fail_before_any_data(override, allowed):
    from hydra import compose, initialize_config_dir

    from lmvit.config import ConfigError, validate
    from tests.helpers import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[override])
    with pytest.raises(ConfigError, match=f"Invalid setting {override.split('=')[0]}.*{allowed}"):
        validate(cfg)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        validate(compose("train", overrides=[override.split(".")[0] + "." + override.split(".")[1] + "=null"]))


def test_class_names_come_from_the_data_module():
    from types import SimpleNamespace

    from datamodules.cifar10 import CIFAR10DataModule

    cifar = SimpleNamespace(datamodule=CIFAR10DataModule())
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert ClassInspection().names(cifar, 10) == names  # CIFAR-10's batches.meta order
    assert ClassInspection().names(SimpleNamespace(datamodule=None), 3) == ["0", "1", "2"]
    assert ClassInspection(class_names=["a", "b"]).names(cifar, 2) == ["a", "b"]
