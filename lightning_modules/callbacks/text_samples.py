"""Text samples of the language model during training: a few fixed prompts continued every N
validation epochs (and the last) and logged to TensorBoard's TEXT tab (``samples/<n>``), so a sweep
shows how each optimizer's model writes. Sampling is seeded (``seed``; a private generator, the
global RNG is untouched) and runs on global rank 0 only. Does nothing for the ViT or for tokenizers
without text (``npz``).
"""

from __future__ import annotations

import logging

from pytorch_lightning.loggers import TensorBoardLogger

from lightning_modules.callbacks.inspection import ValidationEndCallback
from lightning_modules.generation import TextGenerator
from lmvit.settings import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE_INT

log = logging.getLogger(__name__)


class TextSamples(ValidationEndCallback):
    SETTINGS = {
        "every_n_epochs": POSITIVE_INT,
        "max_tokens": NON_NEGATIVE_INT,
        "temperature": (NON_NEGATIVE[0], "a number >= 0 (0: greedy)"),
        "top_k": (POSITIVE_INT[0], "an integer >= 1, or null for all tokens"),
    }
    PREFIX = "callbacks.text_samples."

    def __init__(
        self,
        prompts: list[str] | None = None,
        every_n_epochs: int = 1,
        max_tokens: int = 30,
        temperature: float = 0.8,
        top_k: int | None = 40,
        seed: int = 0,
    ) -> None:
        self.check_settings(
            dict(every_n_epochs=every_n_epochs, max_tokens=max_tokens, temperature=temperature, top_k=top_k)
        )
        self.prompts = list(prompts or ["The history of"])
        self.every_n_epochs, self.max_tokens = every_n_epochs, max_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self._generator: TextGenerator | None = None

    def _text_generator(self, trainer, pl_module) -> TextGenerator | None:
        net = getattr(pl_module, "net", None)
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if net is None or not hasattr(net, "lstm") or getattr(tokenizer, "name", None) not in ("word", "gpt2"):
            return None
        if self._generator is None or self._generator.net is not net:
            self._generator = TextGenerator(net, tokenizer)
        return self._generator

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs and epoch != trainer.max_epochs:
            return
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        generator = self._text_generator(trainer, pl_module) if writers else None
        if generator is None:
            return
        for i, prompt in enumerate(self.prompts, start=1):
            sample = generator.generate(prompt, self.max_tokens, self.temperature, self.top_k, self.seed)
            text = f"**{prompt}** {sample.text}".replace("\n", "  \n")  # markdown line breaks
            for writer in writers:
                writer.add_text(f"samples/{i}", text, trainer.global_step)
        for writer in writers:
            writer.flush()
