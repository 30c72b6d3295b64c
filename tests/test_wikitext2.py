"""WikiText-2 data: tokenizers, chunking, caching and missing files, on the real files in DATA_DIR."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from datamodules.tokenizers import EOS, UNK, GPT2Tokenizer, WordTokenizer
from datamodules.wikitext2 import WikiText2DataModule, chunk
from lmvit.errors import DatasetError

OFFLINE = dict(train_file="wiki.valid.tokens", val_file="wiki.test.tokens", test_file="wiki.test.tokens")


@pytest.fixture(scope="module")
def valid_file(data_dir):
    return data_dir / "wikitext-2" / "wiki.valid.tokens"


@pytest.fixture(scope="module")
def test_file(data_dir):
    return data_dir / "wikitext-2" / "wiki.test.tokens"


@pytest.fixture(scope="module")
def gpt2(data_dir):
    return GPT2Tokenizer(data_dir / "gpt2-tokenizer")


def _words(path):
    return [w for line in path.read_text(encoding="utf-8").splitlines(keepends=True) for w in [*line.split(), EOS]]


def test_word_tokenizer_counts_and_unknowns(valid_file, test_file):
    tok = WordTokenizer.from_file(valid_file)
    valid_ids = tok.file_ids(valid_file)
    test_ids = tok.file_ids(test_file)
    assert len(valid_ids) == 217_646 and len(test_ids) == 245_569
    valid_words = _words(valid_file)
    assert tok.vocab_size == len(set(valid_words))  # <unk> and <eos> occur in the file itself
    assert tok.decode(valid_ids.tolist()).split() == valid_words
    # test words never seen in the train (here: valid) file become <unk>, the others keep their id
    expected = [tok.index.get(w, tok.index[UNK]) for w in _words(test_file)]
    assert test_ids.tolist() == expected
    unseen = sum(w not in tok.index for w in _words(test_file))
    assert unseen > 1000 and int((test_ids == tok.unk_id).sum()) >= unseen


def test_word_vocabulary_save_load_round_trip(valid_file, tmp_path):
    tok = WordTokenizer.from_file(valid_file)
    tok.save(tmp_path / "vocab.txt")
    again = WordTokenizer.load(tmp_path / "vocab.txt")
    assert again.vocab == tok.vocab and again.fingerprint == tok.fingerprint


def test_gpt2_tokenizer_ids_and_round_trip(gpt2, test_file):
    assert gpt2.vocab_size == 50_257
    assert gpt2.eot_id == 50_256
    assert gpt2.encode("Hello world") == [15496, 995]  # GPT-2's published ids
    assert gpt2.encode("<|endoftext|>") == [50_256]
    lines = [line.rstrip("\n") for line in test_file.read_text(encoding="utf-8").splitlines()]
    real = [line for line in lines if line.strip()][:300]
    for line in real:
        assert gpt2.decode(gpt2.encode(line)) == line
    ids = gpt2.file_ids(test_file)
    assert int((ids == 50_256).sum()) == len(lines)  # one <|endoftext|> per line


def test_chunks_shift_by_one_and_mask_only_padding(valid_file):
    ids = WordTokenizer.from_file(valid_file).file_ids(valid_file)
    n, seq_len = len(ids), 256
    source, target, mask = chunk(ids, seq_len)
    num = math.ceil(n / (seq_len + 1))
    assert source.shape == target.shape == mask.shape == (num, seq_len)
    assert torch.equal(target[:, :-1], source[:, 1:])
    # the stream, read back chunk by chunk, is the token ids followed by zero padding only
    stream = torch.cat([source, target[:, -1:]], dim=1).reshape(-1)
    assert torch.equal(stream[:n], ids) and not stream[n:].any()
    # mask is 1 exactly where the target's position in the stream holds a real token
    target_pos = torch.arange(num)[:, None] * (seq_len + 1) + torch.arange(1, seq_len + 1)[None, :]
    assert torch.equal(mask.bool(), target_pos < n)
    assert int(mask.sum()) == n - num  # every chunk predicts all its tokens but the first
    assert mask[:-1].all() and not mask[-1].all()


def test_chunk_drops_a_lone_leftover_token():
    ids = torch.arange(1, 2 * 5 + 2)  # two chunks of 5 and one token left with nothing to predict
    source, target, mask = chunk(ids, 4)
    assert source.shape == (2, 4) and mask.all()
    with pytest.raises(ValueError, match="too short"):
        chunk(torch.tensor([7]), 4)


def test_datamodule_batches_and_cache_reuse(data_dir, tmp_path):
    cache = tmp_path / "cache"
    dm = WikiText2DataModule(str(data_dir), cache_dir=str(cache), seq_len=64, batch_size=8, **OFFLINE)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.vocab_size == len(set(_words(data_dir / "wikitext-2" / "wiki.valid.tokens")))
    source, target, mask = next(iter(dm.train_dataloader()))
    assert source.shape == target.shape == mask.shape == (8, 64)
    assert not torch.equal(source, dm.datasets["train"].tensors[0][:8])  # train batches are shuffled
    assert len(dm.datasets["train"]) == math.ceil(217_646 / 65)
    files = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len([p for p in files if p.suffix == ".pt"]) == 2 and len([p for p in files if p.suffix == ".txt"]) == 1

    again = WikiText2DataModule(str(data_dir), cache_dir=str(cache), seq_len=64, **OFFLINE)
    again.setup("fit")  # from the cache: no file rewritten or added
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == files
    for split in ("train", "val"):
        assert all(torch.equal(a, b) for a, b in zip(dm.datasets[split].tensors, again.datasets[split].tensors))
    # the val (test) split sequences are shuffled only in train: val order is the stream order
    val_loader = again.val_dataloader()
    assert torch.equal(next(iter(val_loader))[0], again.datasets["val"].tensors[0][:16])

    gpt = WikiText2DataModule(str(data_dir), cache_dir=str(cache), tokenizer="gpt2", **OFFLINE)
    gpt.setup("test")
    assert gpt.vocab_size == 50_257 and len(list(cache.glob("*.gpt2-*.pt"))) == 1


def test_cache_is_rebuilt_when_the_file_changes(data_dir, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("wiki.valid.tokens", "wiki.test.tokens"):
        shutil.copy(data_dir / "wikitext-2" / name, corpus / name)
    kwargs = dict(folder=".", cache_dir=str(tmp_path / "cache"), **OFFLINE)
    dm = WikiText2DataModule(str(corpus), **kwargs)
    dm.setup("fit")
    before = dm.vocab_size
    with (corpus / "wiki.valid.tokens").open("a", encoding="utf-8") as f:
        f.write(" zyzzyva quokka zyzzyva \n")
    dm = WikiText2DataModule(str(corpus), **kwargs)
    dm.setup("fit")
    assert dm.vocab_size == before + 2  # the vocabulary was rebuilt from the edited train file
    ids = dm._split_ids("train", dm.tokenizer)
    assert len(ids) == 217_646 + 4
    assert dm.tokenizer.decode(ids[-4:].tolist()) == f"zyzzyva quokka zyzzyva {EOS}"


def test_default_cache_is_outside_the_data_folder(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = data_dir / "wikitext-2"
    before = sorted(p.name for p in folder.iterdir())
    dm = WikiText2DataModule(str(data_dir), **OFFLINE)
    dm.prepare_data()
    assert dm.cache_dir == tmp_path / "xdg" / "lmvit" / "wikitext-2"
    assert len(list(dm.cache_dir.glob("*.pt"))) == 2
    assert sorted(p.name for p in folder.iterdir()) == before


def test_unwritable_cache_dir_names_the_setting(data_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    dm = WikiText2DataModule(str(data_dir), cache_dir=str(blocker / "cache"), **OFFLINE)
    with pytest.raises(DatasetError, match="data.cache_dir"):
        dm.prepare_data()


def test_missing_files_offline_error_names_files_and_folder(tmp_path):
    # mirrors on a closed local port: a real (failing) network attempt, nothing mocked
    dm = WikiText2DataModule(
        str(tmp_path),
        cache_dir=str(tmp_path / "cache"),
        download_timeout=2,
        mirrors=("http://127.0.0.1:9/wikitext-2/", "http://127.0.0.1:9/wikitext-2-v1.zip"),
    )
    with pytest.raises(DatasetError) as err:
        dm.prepare_data()
    message = str(err.value)
    for expected in (
        "wiki.train.tokens",
        "wiki.valid.tokens",
        "wiki.test.tokens",
        str(tmp_path / "wikitext-2"),
        "downloading them failed",
        "data.train_file",
    ):
        assert expected in message
    assert not (tmp_path / "wikitext-2").exists() or not any((tmp_path / "wikitext-2").iterdir())


def test_npz_tokens_are_read_as_they_are(gpt2, data_dir, tmp_path):
    """The course's format (tokens + per-line sizes), here written from real GPT-2 ids."""
    lines = (data_dir / "wikitext-2" / "wiki.test.tokens").read_text(encoding="utf-8").splitlines()
    per_line = [enc.ids for enc in gpt2.tokenizer.encode_batch(lines)]
    for name in ("wiki.train.npz", "wiki.validation.npz", "wiki.test.npz"):
        np.savez(
            tmp_path / name,
            tokens=np.array([i for ids in per_line for i in ids], dtype=np.uint16),
            sizes=np.array([len(ids) for ids in per_line]),
        )
    dm = WikiText2DataModule(
        str(tmp_path), folder=".", tokenizer="npz", npz_vocab_size=50_257, cache_dir=str(tmp_path / "cache")
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.vocab_size == 50_257
    expected = np.load(tmp_path / "wiki.train.npz")["tokens"].astype(np.int64)
    source, target, mask = dm.datasets["train"].tensors
    stream = torch.cat([source, target[:, -1:]], dim=1).reshape(-1)[: len(expected)]
    assert torch.equal(stream, torch.from_numpy(expected))

    small = WikiText2DataModule(str(tmp_path), folder=".", tokenizer="npz", npz_vocab_size=1000)
    with pytest.raises(ValueError, match="data.npz_vocab_size"):
        small.setup("fit")
    missing = WikiText2DataModule(str(tmp_path / "nowhere"), tokenizer="npz")
    with pytest.raises(DatasetError, match="wiki.validation.npz"):
        missing.prepare_data()
