"""WikiText-2 for the LSTM language model: files -> token ids (cached) -> 257-token chunks.

Each split's token stream is cut into consecutive, non-overlapping chunks of ``seq_len + 1``
tokens; a chunk gives ``source = chunk[:-1]`` and ``target = chunk[1:]``. The last chunk is
zero-padded and its ``mask`` (over target positions) is 0 exactly on padding. Train batches are
shuffled; every batch starts from a zero hidden state (the net never carries state over).

Files: ``train_file``/``val_file``/``test_file`` are absolute paths or names inside
``<data_dir>/<folder>/`` (``folder`` defaults to ``wikitext-2``). When the standard WikiText-2
files are missing, ``prepare_data`` downloads them from public mirrors and checks them.

Cache: token ids of each split go to ``cache_dir`` (default: ``$XDG_CACHE_HOME/lmvit/wikitext-2``,
i.e. ``~/.cache/lmvit/wikitext-2``, so read-only or shared data folders are never written), as
``<split file>.<tokenizer fingerprint>.<file key>.pt``; the file key hashes the raw file's absolute
path, size and modification time, so editing the file or changing the tokenizer rebuilds it.
The ``word`` vocabulary is saved there too (``vocab.<file key of the train file>.txt``).
Writes go to a temporary name and are renamed into place (concurrent runs are safe).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules import check_data_dir
from datamodules.sampling import make_loader
from datamodules.tokenizers import (
    COURSE_VOCAB_SIZE,
    TOKENIZERS,
    GPT2Tokenizer,
    NpzTokens,
    WordTokenizer,
)
from lmvit.errors import DatasetError
from lmvit.io import atomic_path, atomic_write
from lmvit.settings import FLAG, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, Checked, check_path, one_of

log = logging.getLogger(__name__)

FOLDER = "wikitext-2"
SPLITS = ("train", "val", "test")
DEFAULT_FILES = {
    "text": {"train": "wiki.train.tokens", "val": "wiki.valid.tokens", "test": "wiki.test.tokens"},
    "npz": {"train": "wiki.train.npz", "val": "wiki.validation.npz", "test": "wiki.test.npz"},
}
# Public copies of WikiText-2 (v1, word level). A mirror is either a base URL to which
# ``pytorch/examples``' file names are appended, or a zip of the official release.
MIRRORS = (
    "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/",
    "https://wikitext.smerity.com/wikitext-2-v1.zip",
    "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
)
MIRROR_NAMES = {"wiki.train.tokens": "train.txt", "wiki.valid.tokens": "valid.txt", "wiki.test.tokens": "test.txt"}
# (lines, tokens as line.split() + <eos>) of the official files: a download is checked against them
EXPECTED = {
    "wiki.train.tokens": (36_718, 2_088_628),
    "wiki.valid.tokens": (3_760, 217_646),
    "wiki.test.tokens": (4_358, 245_569),
}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lmvit" / FOLDER


def file_key(path: Path) -> str:
    """Changes when the file is replaced or edited (absolute path, size, mtime)."""
    st = path.stat()
    text = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def count_words(path: Path) -> tuple[int, int]:
    """(lines, tokens) of a WikiText file, tokens counted as ``line.split() + ['<eos>']``."""
    lines = tokens = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            lines += 1
            tokens += len(line.split()) + 1
    return lines, tokens


def chunk(ids: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 1-D token stream -> (source, target, mask), each (num_chunks, seq_len).

    Consecutive chunks of ``seq_len + 1`` tokens, the last one zero-padded; ``mask`` is 1 where
    the target is a real token. A final chunk with no real target (one leftover token) is dropped.
    """
    span = seq_len + 1
    n = len(ids)
    num_chunks = -(-n // span)
    if num_chunks and n - (num_chunks - 1) * span < 2:
        num_chunks -= 1  # the leftover token has nothing to predict
    if num_chunks == 0:
        raise ValueError(f"a split of {n} tokens is too short for one sequence (need >= 2 tokens)")
    padded = torch.zeros(num_chunks * span, dtype=torch.int64)
    real = torch.zeros(num_chunks * span, dtype=torch.float32)
    kept = min(n, num_chunks * span)
    padded[:kept] = ids[:kept]
    real[:kept] = 1.0
    padded, real = padded.view(num_chunks, span), real.view(num_chunks, span)
    return padded[:, :-1].contiguous(), padded[:, 1:].contiguous(), real[:, 1:].contiguous()


def _atomic_save(obj, path: Path) -> None:
    atomic_write(path, obj.save if isinstance(obj, WordTokenizer) else lambda tmp: torch.save(obj, tmp))


class WikiText2DataModule(Checked, pl.LightningDataModule):
    """Token-id chunks of WikiText-2 (or any corpus in its format); ``vocab_size`` for the model.

    Args:
        data_dir: root data folder; relative file names are looked up in ``data_dir/folder``.
        folder: sub-folder holding the split files (``wikitext-2``; ``.`` for ``data_dir`` itself).
        tokenizer: ``word`` | ``gpt2`` | ``npz`` (see :mod:`datamodules.tokenizers`).
        tokenizer_dir: folder with GPT-2's ``vocab.json`` + ``merges.txt`` (``gpt2`` only;
            default ``data_dir/gpt2-tokenizer``).
        seq_len: tokens per source sequence (chunks hold ``seq_len + 1``).
        train_file, val_file, test_file: split files; ``None`` picks WikiText-2's names
            (``wiki.{train,valid,test}.tokens``, or ``wiki.{train,validation,test}.npz`` for npz).
        cache_dir: where token ids are cached (default: ``~/.cache/lmvit/wikitext-2``).
        download: fetch missing standard WikiText-2 files from ``mirrors``.
        download_timeout: seconds per connection attempt.
        npz_vocab_size: vocabulary of the ids in npz files (the course's GPT-1 BPE: 40,479).
    """

    BATCH = "tokens"  # what a batch holds: the model's BATCH must match (lmvit.config.validate)
    SETTINGS = {
        "tokenizer": one_of(TOKENIZERS),
        "seq_len": POSITIVE_INT,
        "batch_size": POSITIVE_INT,
        "num_workers": NON_NEGATIVE_INT,
        "download": FLAG,
        "download_timeout": POSITIVE,
        "npz_vocab_size": POSITIVE_INT,
        "pin_memory": FLAG,
    }
    PREFIX = "data."

    @classmethod
    def check_settings(cls, values, prefix=None) -> None:
        super().check_settings(values, prefix)
        prefix = cls.PREFIX if prefix is None else prefix
        check_path(f"{prefix}tokenizer_dir", values.get("tokenizer_dir"), "folder")
        check_data_dir(values.get("data_dir"), prefix)

    def __init__(
        self,
        data_dir: str = "./data",
        folder: str = FOLDER,
        tokenizer: str = "word",
        tokenizer_dir: str | None = None,
        seq_len: int = 256,
        batch_size: int = 16,
        num_workers: int = 0,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        cache_dir: str | None = None,
        download: bool = True,
        download_timeout: float = 30.0,
        mirrors: Sequence[str] = MIRRORS,
        npz_vocab_size: int = COURSE_VOCAB_SIZE,
        pin_memory: bool = True,
        seed: int = 42,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["mirrors"])
        # data_dir and tokenizer_dir are checked for train.py's runs only (Python callers may fill them later)
        self.check_settings({k: v for k, v in self.hparams.items() if k not in ("data_dir", "tokenizer_dir")})
        self.mirrors = tuple(mirrors)
        self.root = Path(data_dir).expanduser().resolve()
        self.folder = (self.root / folder).resolve()
        defaults = DEFAULT_FILES["npz" if tokenizer == "npz" else "text"]
        given = {"train": train_file, "val": val_file, "test": test_file}
        self.files = {s: self._resolve(given[s] or defaults[s]) for s in SPLITS}
        self.cache_dir = Path(cache_dir).expanduser().resolve() if cache_dir else default_cache_dir()
        self.tokenizer_dir = Path(tokenizer_dir).expanduser() if tokenizer_dir else self.root / "gpt2-tokenizer"
        self.tokenizer = None
        self.datasets: dict[str, TensorDataset] = {}

    def _resolve(self, name: str) -> Path:
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.folder / path

    # -- files -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Find (or download) the split files, then tokenize and cache each split once."""
        self._ensure_files()
        self._ensure_cache_dir()
        tokenizer = self._build_tokenizer()
        for split in SPLITS:
            self._split_ids(split, tokenizer)

    def _missing(self) -> list[Path]:
        return [p for p in dict.fromkeys(self.files.values()) if not p.is_file()]

    def _ensure_files(self) -> None:
        missing = self._missing()
        downloadable = [p for p in missing if p.name in EXPECTED]
        if downloadable and self.hparams.download and self.hparams.tokenizer != "npz":
            self._download(downloadable)
            missing = self._missing()
        if missing:
            raise DatasetError(self._missing_message(missing))

    def _missing_message(self, missing: list[Path], reason: str = "") -> str:
        names = ", ".join(p.name for p in missing)
        where = sorted({str(p.parent) for p in missing})
        if self.hparams.tokenizer == "npz":
            how = "Copy the course's pre-tokenized wiki.train.npz, wiki.validation.npz and wiki.test.npz there"
        else:
            how = (
                "Download WikiText-2 (v1) from https://wikitext.smerity.com/wikitext-2-v1.zip and "
                "extract wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens there"
            )
        return (
            f"WikiText-2 files missing in {', '.join(where)}: {names}{reason}. {how}, point "
            "data.data_dir (or DATA_DIR) at the folder holding wikitext-2/, or choose other files "
            "with data.train_file / data.val_file / data.test_file (e.g. offline: "
            "data.train_file=wiki.valid.tokens data.val_file=wiki.test.tokens "
            "data.test_file=wiki.test.tokens)."
        )

    def _download(self, files: list[Path]) -> None:
        errors: list[str] = []
        for mirror in self.mirrors:
            todo = [p for p in files if not p.is_file()]
            if not todo:
                return
            log.info("Downloading %s from %s", ", ".join(p.name for p in todo), mirror)
            try:
                if mirror.endswith(".zip"):
                    self._download_zip(mirror, todo)
                else:
                    for path in todo:
                        url = mirror.rstrip("/") + "/" + MIRROR_NAMES[path.name]
                        self._install(self._fetch(url), path)
            except (OSError, DatasetError, zipfile.BadZipFile) as exc:
                errors.append(f"{mirror}: {type(exc).__name__}: {exc}")
                log.warning("WikiText-2 mirror failed: %s", errors[-1])
        missing = [p for p in files if not p.is_file()]
        if missing:
            raise DatasetError(
                self._missing_message(missing, reason=" and downloading them failed (" + "; ".join(errors) + ")")
            )

    def _fetch(self, url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=self.hparams.download_timeout) as response:
            return response.read()

    def _download_zip(self, url: str, files: list[Path]) -> None:
        with zipfile.ZipFile(io.BytesIO(self._fetch(url))) as archive:
            members = {Path(n).name: n for n in archive.namelist()}
            for path in files:
                if path.name not in members:
                    raise DatasetError(f"{url} has no {path.name}")
                self._install(archive.read(members[path.name]), path)

    def _install(self, data: bytes, path: Path) -> None:
        """Write a downloaded file atomically after checking its line and token counts."""
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
            counts = count_words(tmp)
            if counts != EXPECTED[path.name]:
                raise DatasetError(
                    f"downloaded {path.name} has {counts[0]} lines / {counts[1]} tokens, "
                    f"expected {EXPECTED[path.name][0]} / {EXPECTED[path.name][1]}"
                )
        log.info("Saved %s", path)

    def _ensure_cache_dir(self) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.cache_dir, prefix=".probe.")
            probe.close()
        except OSError as exc:
            raise DatasetError(
                f"Cannot write the token cache in {self.cache_dir} ({exc}). Set data.cache_dir to "
                "a writable folder (or XDG_CACHE_HOME)."
            ) from exc

    # -- tokens ------------------------------------------------------------------------------
    def _build_tokenizer(self):
        kind = self.hparams.tokenizer
        if kind == "gpt2":
            return GPT2Tokenizer(self.tokenizer_dir)
        if kind == "npz":
            return NpzTokens(self.hparams.npz_vocab_size)
        train = self.files["train"]
        vocab_path = self.cache_dir / f"vocab.{file_key(train)}.txt"
        if vocab_path.is_file():
            return WordTokenizer.load(vocab_path)
        log.info("Building the word vocabulary of %s", train)
        tokenizer = WordTokenizer.from_file(train)
        self._ensure_cache_dir()
        _atomic_save(tokenizer, vocab_path)
        return tokenizer

    def cache_path(self, split: str, tokenizer) -> Path:
        path = self.files[split]
        return self.cache_dir / f"{path.name}.{tokenizer.fingerprint}.{file_key(path)}.pt"

    def _split_ids(self, split: str, tokenizer) -> torch.Tensor:
        path = self.files[split]
        if tokenizer.name == "npz":
            return tokenizer.file_ids(path)  # already ids: nothing worth caching
        cache = self.cache_path(split, tokenizer)
        if cache.is_file():
            try:
                return torch.load(cache).long()
            except Exception as exc:  # a damaged cache is rebuilt, never trusted
                log.warning("Ignoring unreadable cache %s (%s)", cache, exc)
        log.info("Tokenizing %s (%s)", path, tokenizer.name)
        ids = tokenizer.file_ids(path)
        if len(ids) and int(ids.max()) >= tokenizer.vocab_size:
            raise DatasetError(f"{path}: token id {int(ids.max())} >= vocabulary size {tokenizer.vocab_size}")
        dtype = torch.int32 if tokenizer.vocab_size < 2**31 else torch.int64
        self._ensure_cache_dir()
        _atomic_save(ids.to(dtype), cache)
        return ids

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self._ensure_files()
            self.tokenizer = self._build_tokenizer()
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, SPLITS):
            if split not in self.datasets:
                ids = self._split_ids(split, self.tokenizer)
                self.datasets[split] = TensorDataset(*chunk(ids, self.hparams.seq_len))
                log.info(
                    "WikiText-2 %s: %s -> %d tokens, %d sequences of %d",
                    split,
                    self.files[split].name,
                    len(ids),
                    len(self.datasets[split]),
                    self.hparams.seq_len,
                )

    @property
    def vocab_size(self) -> int:
        """Number of token ids of the tokenizer (the model's vocabulary); known after ``setup``."""
        if self.tokenizer is None:
            raise RuntimeError("WikiText2DataModule.vocab_size is known after prepare_data()/setup()")
        return self.tokenizer.vocab_size

    # -- loaders -----------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> DataLoader:
        return make_loader(
            self.datasets[split],
            train=train,
            batch_size=self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
            seed=self.hparams.seed,
            trainer_getter=lambda: getattr(self, "trainer", None),
            with_seeds=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
