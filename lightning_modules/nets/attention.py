"""Hand-written multi-head self-attention.

One module, two numerically equal paths selected by ``implementation``:

* ``"explicit"``: softmax(Q K^T / sqrt(head_size)) V written out, so the attention
  weights can be inspected (``return_weights=True``);
* ``"sdpa"``: the same computation through ``torch.nn.functional.scaled_dot_product_attention``
  (fused kernels on GPU, fewer intermediate tensors on CPU).

Parameters: Q, K and V projections (stored as one ``qkv`` Linear(d, 3d)) and the output
projection, each a d x d weight plus a d bias: 4 d (d + 1) in all.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmvit.settings import POSITIVE_INT, Checked, invalid, one_of

IMPLEMENTATIONS = ("explicit", "sdpa")


class MultiHeadAttention(Checked, nn.Module):
    # its settings as the config names them (model.attention is ``implementation`` here)
    SETTINGS = {"embed_dim": POSITIVE_INT, "num_heads": POSITIVE_INT, "attention": one_of(IMPLEMENTATIONS)}
    PREFIX = "model."

    @classmethod
    def check_settings(cls, values, prefix=None) -> None:
        super().check_settings(values, prefix)
        prefix = cls.PREFIX if prefix is None else prefix
        embed_dim, num_heads = values.get("embed_dim"), values.get("num_heads")
        if embed_dim is not None and num_heads is not None and embed_dim % num_heads:
            raise invalid(f"{prefix}num_heads", num_heads, f"a divisor of {prefix}embed_dim={embed_dim}")

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        implementation: str = "explicit",
    ) -> None:
        super().__init__()
        self.check_settings({"embed_dim": embed_dim, "num_heads": num_heads, "attention": implementation})
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_size = embed_dim // num_heads
        self.dropout = dropout
        self.implementation = implementation
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)  # Q, K, V projections, one matmul
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.attn_dropout = nn.Dropout(dropout)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, embed_dim) -> (batch, heads, tokens, head_size)."""
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.num_heads, self.head_size).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, heads, tokens, head_size) -> (batch, tokens, embed_dim)."""
        batch, _, tokens, _ = x.shape
        return x.transpose(1, 2).reshape(batch, tokens, self.embed_dim)

    def forward(
        self, x: torch.Tensor, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        q, k, v = (self.split_heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        weights = None
        if self.implementation == "sdpa" and not return_weights:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)
            weights = scores.softmax(dim=-1)
            out = self.attn_dropout(weights) @ v
        out = self.out_proj(self.merge_heads(out))
        return (out, weights) if return_weights else out
