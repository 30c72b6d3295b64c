"""The study's LSTM language model (plain nn.Module, no Lightning).

tokens -> Embedding(vocab, E) -> LSTM(E, H, num_layers, batch_first) -> Linear(H, E) -> ReLU
-> Linear(E, vocab, no bias) whose weight *is* the embedding matrix (tied).

Optional dropout on the embeddings and on the LSTM's outputs (``embedding_dropout``,
``output_dropout``; 0 in the study, where the model has none) fights its overfitting.

Each forward starts from a zero hidden state, as in the study. With ``E=768, H=512`` and one
layer the net has 3,019,520 parameters besides the (tied) embedding matrix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmvit.settings import FLAG, FRACTION, POSITIVE_INT, Checked, check_path


def load_embeddings(path: str | Path) -> torch.Tensor:
    """The ``tokens`` matrix (vocab x embedding size) of a ``.npz`` file, as float32."""
    check_path("model.embeddings_path", path, "file")
    path = Path(path).expanduser()
    with np.load(path) as npz:
        if "tokens" not in npz.files:
            raise ValueError(
                f"model.embeddings_path={str(path)!r} holds arrays {npz.files}, expected one named "
                "'tokens' of shape (vocab, embedding_size)."
            )
        matrix = np.asarray(npz["tokens"], dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(
            f"model.embeddings_path={str(path)!r}: 'tokens' has shape {matrix.shape}, expected (vocab, embedding_size)."
        )
    return torch.from_numpy(matrix)


class LSTMLanguageModel(Checked, nn.Module):
    """Next-token logits for every position of a batch of token ids.

    Args:
        vocab_size: number of token ids (rows of the embedding matrix).
        embedding_size: E, the token embedding size (also the input of the tied output layer).
        hidden_size: H, the LSTM state size.
        num_layers: stacked LSTM layers.
        embeddings_path: optional ``.npz`` file whose ``tokens`` array (vocab_size x E) initialises
            the embedding matrix.
        freeze_embeddings: keep the embedding matrix (hence the tied output layer) fixed.
        embedding_dropout: dropout probability on the token embeddings entering the LSTM.
        output_dropout: dropout probability on the LSTM's outputs, before the projection.
    """

    # the tied input/output matrix: AdamW's, not Muon's, with optimizer=muon (lightning_modules/optim.py);
    # the LSTM's weight_ih/weight_hh (4 gates stacked) and the projection are Muon's hidden matrices
    input_output_modules = ("embedding", "classifier")
    SETTINGS = {
        "vocab_size": POSITIVE_INT,
        "embedding_size": POSITIVE_INT,
        "hidden_size": POSITIVE_INT,
        "num_layers": POSITIVE_INT,
        "freeze_embeddings": FLAG,
        "embedding_dropout": FRACTION,
        "output_dropout": FRACTION,
    }
    PREFIX = "model."

    @classmethod
    def check_settings(cls, values, prefix=None) -> None:
        super().check_settings(values, prefix)
        check_path(f"{cls.PREFIX if prefix is None else prefix}embeddings_path", values.get("embeddings_path"))

    def __init__(
        self,
        vocab_size: int,
        embedding_size: int = 768,
        hidden_size: int = 512,
        num_layers: int = 1,
        embeddings_path: str | None = None,
        freeze_embeddings: bool = False,
        embedding_dropout: float = 0.0,
        output_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.check_settings(
            dict(
                vocab_size=vocab_size,
                embedding_size=embedding_size,
                hidden_size=hidden_size,
                num_layers=num_layers,
                embeddings_path=embeddings_path,
                freeze_embeddings=freeze_embeddings,
                embedding_dropout=embedding_dropout,
                output_dropout=output_dropout,
            )
        )
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.lstm = nn.LSTM(embedding_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.output_dropout = nn.Dropout(output_dropout)
        self.projection = nn.Sequential(nn.Linear(hidden_size, embedding_size), nn.ReLU())
        self.classifier = nn.Linear(embedding_size, vocab_size, bias=False)
        self.classifier.weight = self.embedding.weight  # tied: one Parameter, one storage
        if embeddings_path is not None:
            matrix = load_embeddings(embeddings_path)
            if tuple(matrix.shape) != (vocab_size, embedding_size):
                raise ValueError(
                    f"model.embeddings_path={str(embeddings_path)!r} holds a {tuple(matrix.shape)} "
                    f"matrix but the model needs ({vocab_size}, {embedding_size}) = (vocabulary of "
                    "the data's tokenizer, model.embedding_size). Use the tokenizer these embeddings "
                    "were made for (e.g. data.tokenizer=npz) and set model.embedding_size to match."
                )
            with torch.no_grad():
                self.embedding.weight.copy_(matrix)
        self.embedding.weight.requires_grad_(not freeze_embeddings)

    def dynamics_blocks(self) -> dict[str, list[str]]:
        """The blocks ``callbacks.dynamics`` measures, input side first: name -> the prefixes of
        their parameters' names (the embedding is tied with the classifier: one block)."""
        names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
        layers = {f"layer{i}": [f"lstm.{n}_l{i}" for n in names] for i in range(self.lstm.num_layers)}
        return {"embedding": ["embedding", "classifier"], **layers, "projection": ["projection"]}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) int ids -> (B, T, vocab) logits; the hidden state starts at zero."""
        hidden, _ = self.lstm(self.embedding_dropout(self.embedding(tokens)))
        return self.classifier(self.projection(self.output_dropout(hidden)))
