"""LightningModule training the study's LSTM language model: masked NLL, token-weighted perplexity."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_modules.base import OptimizerFactory, SchedulerFactory, StudyModule
from lightning_modules.metrics import ExpWeightedMean, WeightedMean
from lightning_modules.nets.lstm import LSTMLanguageModel


def masked_nll(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of the real tokens and their number.

    ``logits`` (B, T, V), ``target`` (B, T) ids, ``mask`` (B, T) with 1 on real tokens and 0 on
    padding; padded positions contribute nothing whatever their logits or ids.
    """
    nll = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten().long(), reduction="none")
    weights = mask.flatten().to(nll.dtype)
    return (nll * weights).sum(), weights.sum()


class LanguageModel(StudyModule):
    """Masked mean NLL + token-weighted perplexity around a plain :class:`LSTMLanguageModel`.

    Every keyword not listed here is passed to the net (``embedding_size``, ``hidden_size``,
    ``num_layers``, ``embeddings_path``, ``freeze_embeddings``). ``vocab_size`` normally comes from
    the data: left ``None``, the net is built in :meth:`configure_model` from the data module's
    ``vocab_size`` (its tokenizer) and recorded in the hyperparameters, so checkpoints reload
    with ``LanguageModel.load_from_checkpoint`` alone. Passing it builds the net at once.
    """

    BATCH = "tokens"  # what a batch holds: the data module's BATCH must match (lmvit.config.validate)

    @classmethod
    def check_settings(cls, values, prefix=None) -> None:
        super().check_settings(values, prefix)
        LSTMLanguageModel.check_settings(values, prefix)  # the net's arguments are model.<name> too

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        compile: bool | str = False,
        compile_mode: str | None = None,
        vocab_size: int | None = None,
        no_weight_decay: bool = False,
        **net_kwargs,
    ) -> None:
        super().__init__(optimizer, scheduler, compile, no_weight_decay=no_weight_decay, compile_mode=compile_mode)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net_kwargs = net_kwargs
        LSTMLanguageModel.check_settings({**net_kwargs, "vocab_size": vocab_size})  # now, not when fit starts
        self.net = None if vocab_size is None else LSTMLanguageModel(vocab_size, **net_kwargs)
        self.add_metric("loss", WeightedMean)
        self.add_metric("ppl", ExpWeightedMean)

    # -- building the net from the data ------------------------------------------------------
    def configure_model(self) -> None:
        data_vocab = self._data_vocab_size()
        if self.net is None:
            if data_vocab is None:
                raise ValueError(
                    "LanguageModel has no vocabulary size: pass vocab_size (model.vocab_size=N) "
                    "or train with a data module that exposes vocab_size (e.g. WikiText2DataModule)."
                )
            self.hparams.vocab_size = data_vocab  # saved in checkpoints
            self.net = LSTMLanguageModel(data_vocab, **self.net_kwargs)
        elif data_vocab is not None and data_vocab != self.net.vocab_size:
            raise ValueError(
                f"model.vocab_size={self.net.vocab_size} but the data's tokenizer has {data_vocab} "
                "tokens: leave model.vocab_size=null to take it from the data, or use the "
                "tokenizer the model (checkpoint) was trained with."
            )
        super().configure_model()

    def _data_vocab_size(self) -> int | None:
        trainer = self._trainer  # None when called by load_from_checkpoint
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        return getattr(datamodule, "vocab_size", None)

    def parameter_counts(self) -> dict[str, int]:
        if self.net is None:
            raise RuntimeError("The net is built at fit time (configure_model); no parameters yet.")
        return super().parameter_counts()

    # -- steps -------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)

    def step(self, batch, stage: str, net=None, suffix: str = "") -> torch.Tensor:
        """Masked mean NLL of ``batch`` by ``net`` (default: ``self.net``), updating the stage's
        metrics ``<name><suffix>``."""
        source, target, mask = batch
        total, count = masked_nll((self.net if net is None else net)(source), target, mask)
        loss = total / count.clamp_min(1)
        self.metrics[stage]["loss" + suffix].update(loss.detach(), weight=count)
        self.metrics[stage]["ppl" + suffix].update(loss.detach(), weight=count)
        return loss
