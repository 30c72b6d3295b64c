"""Sampling text from the LSTM language model (``generate.py``, the training-time text samples, the notebook).

The prompt is read in one pass of the LSTM; then one token at a time is drawn from
``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens (``temperature=0``:
the most likely token), the LSTM state carried from step to step. Draws come from a
``torch.Generator`` seeded with ``seed`` (on the CPU), so the same seed gives the same text on any
device, and the global RNG (dropout's, the data order's) is never touched.

    from lightning_modules.generation import TextGenerator
    generator = TextGenerator.from_run("logs/lstm/runs/<date_time>")        # best checkpoint
    print(generator.generate("The history of", max_tokens=50, temperature=0.8, top_k=40, seed=1).text)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmvit.errors import ConfigError
from lmvit.runs import check_checkpoint, checkpoint, load_model, run_config, run_dir

log = logging.getLogger(__name__)


def _check(max_tokens: int, temperature: float, top_k: int | None) -> None:
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        raise ConfigError(f"Invalid setting max_tokens={max_tokens!r}: must be an integer >= 0.")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ConfigError(f"Invalid setting temperature={temperature!r}: must be a number >= 0 (0: greedy).")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"Invalid setting top_k={top_k!r}: must be an integer >= 1, or null for all tokens.")


@torch.no_grad()
def sample_tokens(
    net: nn.Module,
    context: list[int],
    max_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> list[int]:
    """``max_tokens`` ids continuing ``context`` (a non-empty list of ids) from an
    :class:`~lightning_modules.nets.lstm.LSTMLanguageModel` (its embedding, LSTM, projection and
    tied classifier, stepped with the LSTM state carried over; the same function as its forward)."""
    _check(max_tokens, temperature, top_k)
    if not context:
        raise ValueError("sample_tokens needs at least one context token")
    device = net.embedding.weight.device
    generator = torch.Generator().manual_seed(int(seed))
    was_training = net.training
    net.eval()
    try:
        tokens = torch.tensor([context], dtype=torch.long, device=device)
        state = None
        out: list[int] = []
        for _ in range(max_tokens):
            hidden, state = net.lstm(net.embedding(tokens), state)
            logits = net.classifier(net.projection(hidden[:, -1])).float().squeeze(0).cpu()
            if temperature == 0:
                next_id = int(logits.argmax())
            else:
                if top_k is not None and top_k < logits.numel():
                    kth = torch.topk(logits, top_k).values[-1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = torch.softmax(logits / temperature, dim=-1)
                next_id = int(torch.multinomial(probs, 1, generator=generator))
            out.append(next_id)
            tokens = torch.tensor([[next_id]], dtype=torch.long, device=device)
        return out
    finally:
        net.train(was_training)


@dataclass
class Generation:
    prompt: str
    text: str  # the continuation only
    prompt_ids: list[int]
    ids: list[int]
    unknown: list[str] = field(default_factory=list)  # prompt words read as <unk> (word tokenizer)


class TextGenerator:
    """A language model's net and the tokenizer it was trained with (``word`` or ``gpt2``)."""

    def __init__(self, net: nn.Module, tokenizer: Any) -> None:
        if getattr(tokenizer, "name", None) not in ("word", "gpt2"):
            raise ConfigError(
                f"Text generation needs a text tokenizer (data.tokenizer=word or gpt2); this model was trained "
                f"with data.tokenizer={getattr(tokenizer, 'name', tokenizer)!r}, whose ids have no text here."
            )
        self.net, self.tokenizer = net, tokenizer
        self._warned: set[str] = set()

    @classmethod
    def from_run(
        cls, run: str | Path, ckpt: str = "best", data: dict[str, Any] | None = None, map_location: str = "cpu"
    ) -> TextGenerator:
        """The run's checkpoint (``best``, ``last`` or a path) and its tokenizer, rebuilt from the run's
        data config (``data`` overrides, e.g. ``{"data_dir": ..., "tokenizer_dir": ...}``)."""
        from hydra.utils import instantiate

        run = run_dir(run)
        cfg = run_config(run, data=data)
        if cfg.get("task") != "lstm":
            raise ConfigError(
                f"Invalid setting run={str(run)!r}: a {cfg.get('task')} run; text generation needs "
                "a language model run (model=lstm)."
            )
        path = checkpoint(run, ckpt)
        check_checkpoint(path, lambda other: f"python generate.py run={run} ckpt={other}")
        model = load_model(cfg, path, map_location=map_location)
        datamodule = instantiate(cfg.data)
        datamodule.setup("validate")  # builds the tokenizer (the word vocabulary comes from the train file)
        if datamodule.vocab_size != model.net.vocab_size:
            raise ConfigError(
                f"The data's tokenizer has {datamodule.vocab_size} tokens but the model {model.net.vocab_size}: "
                "use the tokenizer (and, for data.tokenizer=word, the train file) the run was trained with."
            )
        return cls(model.net, datamodule.tokenizer)

    def encode_prompt(self, prompt: str) -> tuple[list[int], list[str]]:
        """Prompt -> ids (no end-of-line appended) and the words outside the vocabulary (word tokenizer)."""
        tok = self.tokenizer
        if tok.name == "word":
            words = prompt.split()
            ids = [tok.index.get(w, tok.unk_id) for w in words]
            unknown = list(dict.fromkeys(w for w in words if w not in tok.index))
            return (ids or [tok.eos_id]), unknown  # an empty prompt starts a new line
        ids = tok.encode(prompt)
        return (ids or [tok.eot_id]), []

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer.name == "word":
            return " ".join(self.tokenizer.vocab[i] for i in ids).replace(" <eos> ", "\n").replace("<eos>", "\n")
        return self.tokenizer.decode(ids)

    def generate(
        self, prompt: str, max_tokens: int = 50, temperature: float = 0.8, top_k: int | None = 40, seed: int = 1
    ) -> Generation:
        """Continue ``prompt``; prompt words outside the word vocabulary become ``<unk>`` (logged once each)."""
        prompt_ids, unknown = self.encode_prompt(prompt)
        new = [w for w in unknown if w not in self._warned]
        if new:
            self._warned.update(new)
            log.warning("Prompt words not in the vocabulary, read as <unk>: %s", ", ".join(new))
        ids = sample_tokens(self.net, prompt_ids, max_tokens, temperature, top_k, seed)
        return Generation(prompt, self.decode(ids), prompt_ids, ids, unknown)
