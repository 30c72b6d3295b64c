"""The LSTM language model: net, masked loss, epoch perplexity, config, and train.py end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Subset

from datamodules.wikitext2 import WikiText2DataModule
from lightning_modules.base import count_parameters
from lightning_modules.language_model import LanguageModel, masked_nll
from lightning_modules.nets.lstm import LSTMLanguageModel
from lmvit.config import validate
from lmvit.errors import ConfigError
from tests.helpers import ROOT, assert_close_rel, find_runs, load_metrics, run_train

OFFLINE = ["data.train_file=wiki.valid.tokens", "data.val_file=wiki.test.tokens", "data.test_file=wiki.test.tokens"]
WORD_VOCAB_OF_VALID = 13_777  # distinct words of wiki.valid.tokens, <eos> included


def lstm_params(vocab: int, emb: int, hidden: int, layers: int = 1) -> tuple[int, int]:
    """(parameters besides the embedding, embedding) by hand: LSTM gates 4H x (in + H) weights and
    two 4H biases per layer, Linear(H, E) with bias, tied output layer adds nothing."""
    lstm = sum(4 * hidden * ((emb if i == 0 else hidden) + hidden) + 8 * hidden for i in range(layers))
    return lstm + hidden * emb + emb, vocab * emb


def adam(params):
    return torch.optim.Adam(params, lr=1e-3)


@pytest.fixture(scope="module")
def datamodule(data_dir, tmp_path_factory):
    """Word-level chunks of 32 tokens, wiki.valid as train and wiki.test as val/test."""
    dm = WikiText2DataModule(
        str(data_dir),
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        seq_len=32,
        batch_size=4,
        train_file="wiki.valid.tokens",
        val_file="wiki.test.tokens",
        test_file="wiki.test.tokens",
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


# -- the net ---------------------------------------------------------------------------------
def test_output_layer_is_tied_to_the_embedding():
    torch.manual_seed(0)
    net = LSTMLanguageModel(100, embedding_size=8, hidden_size=6)
    assert net.classifier.weight is net.embedding.weight
    assert net.classifier.weight.data_ptr() == net.embedding.weight.data_ptr()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net(torch.randint(0, 100, (2, 5))).sum().backward()
    opt.step()
    assert torch.equal(net.classifier.weight, net.embedding.weight)
    tokens = torch.randint(0, 100, (3, 7))
    logits = net(tokens)
    assert logits.shape == (3, 7, 100)
    # every call starts from a zero state: no memory of earlier calls or other rows of the batch
    net(torch.randint(0, 100, (3, 7)))
    # (the LSTM kernels for 1 and 3 rows differ in the last bits: compare relative to the logits' scale)
    assert_close_rel(net(tokens[1:2])[0], logits[1], rtol=1e-5)


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_parameter_counts_match_hand_computation(layers):
    vocab = 40_479 if layers == 1 else 1000  # the study's GPT-1 vocabulary (big: built once)
    emb, hidden = 768, 512
    body, embedding = lstm_params(vocab, emb, hidden, layers)
    learned = count_parameters(LSTMLanguageModel(vocab, emb, hidden, layers))
    frozen = count_parameters(LSTMLanguageModel(vocab, emb, hidden, layers, freeze_embeddings=True))
    assert learned == {"learnable": body + embedding, "frozen": 0}
    assert frozen == {"learnable": body, "frozen": embedding}
    if layers == 1:
        assert frozen["learnable"] == 3_019_520  # the study's figure


def test_pretrained_embeddings_are_loaded_and_frozen(tmp_path):
    matrix = np.random.default_rng(0).normal(size=(50, 12)).astype(np.float32)
    np.savez(tmp_path / "embeddings.npz", tokens=matrix)
    net = LSTMLanguageModel(50, 12, 10, embeddings_path=str(tmp_path / "embeddings.npz"), freeze_embeddings=True)
    assert torch.equal(net.embedding.weight, torch.from_numpy(matrix))
    assert torch.equal(net.classifier.weight, torch.from_numpy(matrix))
    assert not net.embedding.weight.requires_grad
    with pytest.raises(ValueError, match="model.embedding_size"):
        LSTMLanguageModel(50, 16, 10, embeddings_path=str(tmp_path / "embeddings.npz"))
    with pytest.raises(ConfigError, match="model.embeddings_path=.*no such file"):
        LSTMLanguageModel(50, 12, 10, embeddings_path=str(tmp_path / "missing.npz"))


# -- loss and perplexity ---------------------------------------------------------------------
def test_masked_loss_ignores_padding(datamodule):
    source, target, mask = datamodule.datasets["val"][-3:]  # the last sequence is padded
    assert not mask.all()
    torch.manual_seed(0)
    logits = torch.randn(*target.shape, datamodule.vocab_size)
    total, count = masked_nll(logits, target, mask)
    hand, n = 0.0, 0
    for b in range(target.shape[0]):
        for t in range(target.shape[1]):
            if mask[b, t]:
                log_probs = logits[b, t] - torch.logsumexp(logits[b, t], dim=0)
                hand -= float(log_probs[target[b, t]])
                n += 1
    assert int(count) == n == int(mask.sum())
    assert float(total) == pytest.approx(hand, rel=1e-5)
    scrambled = logits.clone()
    scrambled[mask == 0] = torch.randn_like(scrambled[mask == 0]) * 100
    assert float(masked_nll(scrambled, target, mask)[0]) == pytest.approx(float(total), rel=1e-6)


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_epoch_perplexity_is_token_weighted(datamodule):
    torch.manual_seed(0)
    model = LanguageModel(adam, vocab_size=datamodule.vocab_size, embedding_size=16, hidden_size=16)
    val = datamodule.datasets["val"]
    # the last 11 sequences in batches of 4, 4, 3: uneven batches, the last one padded
    loader = DataLoader(Subset(val, range(len(val) - 11, len(val))), batch_size=4)
    metrics = _trainer().validate(model, dataloaders=loader, verbose=False)[0]

    totals, counts, batch_ppl = 0.0, 0.0, []
    model.eval()
    with torch.no_grad():
        for source, target, mask in loader:
            log_probs = torch.log_softmax(model.net(source), dim=-1)
            nll = -log_probs.gather(-1, target[..., None]).squeeze(-1)
            totals += float((nll * mask).sum())
            counts += float(mask.sum())
            batch_ppl.append(math.exp(float((nll * mask).sum() / mask.sum())))
    assert metrics["val/loss"] == pytest.approx(totals / counts, rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(math.exp(totals / counts), rel=1e-5)
    assert abs(metrics["val/ppl"] - sum(batch_ppl) / len(batch_ppl)) > 1e-3 * metrics["val/ppl"]


def test_vocab_size_comes_from_the_datamodule(datamodule, tmp_path):
    model = LanguageModel(adam, embedding_size=8, hidden_size=8)
    assert model.net is None
    trainer = _trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=datamodule)
    assert model.net.vocab_size == datamodule.vocab_size == model.hparams.vocab_size
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    again = LanguageModel.load_from_checkpoint(tmp_path / "model.ckpt", optimizer=adam)
    assert all(torch.equal(a, b) for a, b in zip(again.net.state_dict().values(), model.net.state_dict().values()))
    with pytest.raises(ValueError, match="model.vocab_size=10"):
        _trainer(limit_val_batches=1).validate(LanguageModel(adam, vocab_size=10), datamodule=datamodule)


def test_lstm_config_composes_and_instantiates(data_dir):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=lstm", f"data.data_dir={data_dir}"])
    assert cfg.task == "lstm" and cfg.monitor.metric == "val/ppl" and cfg.monitor.mode == "min"
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.data.batch_size, cfg.data.seq_len) == (
        1e-3,
        5e-4,
        16,
        256,
    )
    assert (cfg.seed, cfg.trainer.max_epochs, cfg.model.num_layers) == (42, 10, 1)
    model = instantiate(cfg.model)  # the net waits for the data's vocabulary ...
    assert model.net is None
    model = instantiate(cfg.model, vocab_size=1000)  # ... or is built at once given one
    body, embedding = lstm_params(1000, 768, 512)
    assert model.parameter_counts() == {"learnable": body + embedding, "frozen": 0}
    assert isinstance(instantiate(cfg.data), WikiText2DataModule)


def test_bad_tokenizer_setting_is_one_clear_error(data_dir):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=lstm", f"data.data_dir={data_dir}", "data.tokenizer=bpe"])
    with pytest.raises(ConfigError, match="data.tokenizer='bpe'.*word, gpt2, npz"):
        validate(cfg)


# -- end to end (train.py in a subprocess; numbers trained on wiki.valid, not comparable) ---
SMALL = ["model.embedding_size=32", "model.hidden_size=32", "data.seq_len=32", "callbacks.progress_bar=null"]


@pytest.mark.slow
def test_short_run_writes_artifacts_and_lowers_val_ppl(data_dir, tmp_path):
    run_train(
        "model=lstm",
        "debug=fast",
        *OFFLINE,
        *SMALL,
        f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=5",
        "optimizer.lr=1e-2",
        log_dir=tmp_path / "logs",
        data_dir=data_dir,
    )
    (run,) = find_runs(tmp_path / "logs")
    assert run.parent.parent.name == "lstm"
    metrics = load_metrics(run)
    assert metrics["status"] == "completed" and metrics["task"] == "lstm" and metrics["epochs"] == 3
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").is_file() and list((run / "checkpoints").glob("best-*.ckpt"))
    for stage in ("train", "val"):
        final = metrics["final"]
        assert final[f"{stage}/ppl"] == pytest.approx(math.exp(final[f"{stage}/loss"]), rel=1e-4)
    assert metrics["test"]["test/ppl"] == pytest.approx(math.exp(metrics["test"]["test/loss"]), rel=1e-4)
    body, embedding = lstm_params(WORD_VOCAB_OF_VALID, 32, 32)
    assert metrics["params"] == {"learnable": body + embedding, "frozen": 0}
    assert metrics["train_seconds"] > 0 and metrics["peak_rss_mb"] > 0
    val_ppl = [row["val/ppl"] for row in metrics["history"]]
    assert len(val_ppl) == 3 and val_ppl[2] < val_ppl[1] < val_ppl[0] and val_ppl[2] < 0.85 * val_ppl[0], val_ppl
    assert metrics["best"] == {"val/ppl": min(val_ppl), "epoch": val_ppl.index(min(val_ppl))}
    assert "train/loss_step" not in metrics["final"]
    model = LanguageModel.load_from_checkpoint(run / "checkpoints" / "last.ckpt", optimizer=adam)
    assert model.net.vocab_size == WORD_VOCAB_OF_VALID


@pytest.mark.slow
def test_optimizer_sweep_gives_four_runs(data_dir, tmp_path):
    run_train(
        "-m",
        "model=lstm",
        "data=wikitext2_offline",
        "optimizer=adam,adamw,sgd,momentum",
        "debug=fast",
        "model.embedding_size=16",
        "model.hidden_size=16",
        "data.seq_len=16",
        "trainer.max_epochs=1",
        "test=false",
        log_dir=tmp_path / "logs",
        data_dir=data_dir,
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    runs = find_runs(tmp_path / "logs")
    assert len(runs) == 4 and all(r.parent.parent.name == "multiruns" for r in runs)
    names = sorted(next(p for p in r.name.split(",") if p.startswith("optimizer=")) for r in runs)
    assert names == ["optimizer=adam", "optimizer=adamw", "optimizer=momentum", "optimizer=sgd"]
    for run in runs:
        metrics = load_metrics(run)
        assert metrics["status"] == "completed" and math.isfinite(metrics["final"]["val/ppl"])


def test_weighted_mean_metric_weights_each_update():
    from lightning_modules.metrics import ExpWeightedMean, WeightedMean

    mean, exp_mean = WeightedMean(), ExpWeightedMean()
    for value, weight in [(2.0, 3.0), (4.0, 1.0), (1.0, torch.tensor(4.0))]:
        mean.update(torch.tensor(value), weight)
        exp_mean.update(torch.tensor(value), weight)
    expected = (2 * 3 + 4 * 1 + 1 * 4) / 8
    assert mean.compute().item() == pytest.approx(expected)
    assert exp_mean.compute().item() == pytest.approx(math.exp(expected))
