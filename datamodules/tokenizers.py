"""Text -> token ids for the language model: ``word`` | ``gpt2`` | ``npz``.

- ``word``: WikiText's own tokens, ``line.split() + ["<eos>"]`` per line; the vocabulary is the
  train file's words in order of first appearance (unknown words map to ``<unk>``).
- ``gpt2``: OpenAI's GPT-2 byte-level BPE (``vocab.json`` + ``merges.txt``) through the
  ``tokenizers`` library; each line is encoded and followed by ``<|endoftext|>``.
- ``npz``: the course's pre-tokenized ``wiki.*.npz`` files (``tokens`` and ``sizes`` arrays,
  GPT-1 BPE ids, id 0 = padding): nothing to encode, the ids are read as they are.

Every tokenizer has ``vocab_size``, ``fingerprint`` (changes when its vocabulary does; part of
the data module's cache keys) and ``file_ids(path) -> 1-D int64 tensor`` for a whole file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

TOKENIZERS = ("word", "gpt2", "npz")
EOS = "<eos>"
UNK = "<unk>"
GPT2_EOT = "<|endoftext|>"
GPT2_FILES = ("vocab.json", "merges.txt")
COURSE_VOCAB_SIZE = 40_479  # GPT-1 BPE of the course's npz files and embeddings (id 0 = padding)


def _read_lines(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return f.readlines()


def _sha256(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


class WordTokenizer:
    """Whitespace tokens of WikiText with ``<eos>`` at each line end; a fixed vocabulary."""

    name = "word"

    def __init__(self, vocab: list[str]) -> None:
        if len(set(vocab)) != len(vocab):
            raise ValueError("WordTokenizer vocabulary has duplicate entries")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        for special in (EOS, UNK):
            if special not in self.index:
                raise ValueError(f"WordTokenizer vocabulary lacks {special}")
        self.unk_id = self.index[UNK]
        self.eos_id = self.index[EOS]

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> WordTokenizer:
        """Vocabulary = words in order of first appearance, ``<eos>`` and ``<unk>`` included."""
        seen: dict[str, None] = {}
        for line in lines:
            for word in line.split():
                seen.setdefault(word, None)
            seen.setdefault(EOS, None)
        seen.setdefault(EOS, None)
        seen.setdefault(UNK, None)
        return cls(list(seen))

    @classmethod
    def from_file(cls, path: str | Path) -> WordTokenizer:
        return cls.from_lines(_read_lines(Path(path)))

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        """Read a vocabulary saved by :meth:`save` (one token per line)."""
        return cls(Path(path).read_text(encoding="utf-8").split("\n")[:-1])

    def save(self, path: str | Path) -> None:
        Path(path).write_text("".join(f"{w}\n" for w in self.vocab), encoding="utf-8")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def fingerprint(self) -> str:
        return "word-" + _sha256("\n".join(self.vocab).encode())[:16]

    def encode(self, text: str) -> list[int]:
        """One line -> ids, ``<eos>`` appended."""
        get, unk = self.index.get, self.unk_id
        return [get(w, unk) for w in text.split()] + [self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.vocab[i] for i in ids)

    def file_ids(self, path: str | Path) -> torch.Tensor:
        get, unk, eos = self.index.get, self.unk_id, self.eos_id
        ids = [i for line in _read_lines(Path(path)) for i in [*(get(w, unk) for w in line.split()), eos]]
        return torch.tensor(ids, dtype=torch.int64)


class GPT2Tokenizer:
    """GPT-2 byte-level BPE from ``vocab.json`` + ``merges.txt`` (the ``tokenizers`` library)."""

    name = "gpt2"

    def __init__(self, directory: str | Path) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        self.directory = Path(directory).expanduser()
        missing = [f for f in GPT2_FILES if not (self.directory / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"GPT-2 tokenizer files missing in {self.directory}: {', '.join(missing)}. Put "
                "OpenAI's vocab.json and merges.txt there (e.g. from the 'gpt2' model on the "
                "Hugging Face hub) or point data.tokenizer_dir at the folder holding them."
            )
        vocab, merges = (str(self.directory / f) for f in GPT2_FILES)
        self.tokenizer = Tokenizer(models.BPE.from_file(vocab, merges))
        self.tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self.tokenizer.decoder = decoders.ByteLevel()
        self.tokenizer.add_special_tokens([GPT2_EOT])
        self.eot_id = self.tokenizer.token_to_id(GPT2_EOT)
        self._fingerprint = "gpt2-" + _sha256(*((self.directory / f).read_bytes() for f in GPT2_FILES))[:16]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def file_ids(self, path: str | Path) -> torch.Tensor:
        """Each line (without its newline; blank lines give nothing) then ``<|endoftext|>``."""
        lines = [line.rstrip("\n") for line in _read_lines(Path(path))]
        texts = [line if line.strip() else "" for line in lines]
        encodings = self.tokenizer.encode_batch(texts)
        ids = [i for enc in encodings for i in [*enc.ids, self.eot_id]]
        return torch.tensor(ids, dtype=torch.int64)


class NpzTokens:
    """The course's pre-tokenized files: a ``tokens`` array (all lines, concatenated) and
    per-line ``sizes``; ids are read as they are (``vocab_size`` is the course's GPT-1 BPE)."""

    name = "npz"

    def __init__(self, vocab_size: int = COURSE_VOCAB_SIZE) -> None:
        self._vocab_size = vocab_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def fingerprint(self) -> str:
        return f"npz-{self._vocab_size}"

    def file_ids(self, path: str | Path) -> torch.Tensor:
        path = Path(path)
        with np.load(path) as npz:
            if "tokens" not in npz.files:
                raise ValueError(
                    f"{path} holds arrays {npz.files}, expected 'tokens' (and 'sizes'): the course's "
                    "pre-tokenized format. Use data.tokenizer=word or gpt2 for raw text."
                )
            tokens = np.asarray(npz["tokens"]).astype(np.int64).reshape(-1)
            if "sizes" in npz.files and int(np.asarray(npz["sizes"]).sum()) != len(tokens):
                raise ValueError(
                    f"{path}: 'sizes' sums to {int(np.asarray(npz['sizes']).sum())} but 'tokens' "
                    f"holds {len(tokens)} ids; the file is corrupt."
                )
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self._vocab_size):
            raise ValueError(
                f"{path} holds token ids in [{tokens.min()}, {tokens.max()}], outside the vocabulary "
                f"of {self._vocab_size} (data.npz_vocab_size)."
            )
        return torch.from_numpy(tokens)
