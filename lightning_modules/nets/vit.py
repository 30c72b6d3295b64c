"""The study's Vision Transformer for 32x32 images (plain nn.Module, no Lightning).

image -> 4x4 patches (64 x 48 values) -> Linear(48, d) -> [cls] + positional embedding
-> dropout -> N transformer blocks (pre- or post-norm) -> LayerNorm -> Linear(d, classes) on [cls].
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.nets.attention import MultiHeadAttention
from lmvit.settings import FRACTION, POSITIVE_INT, Checked, invalid, one_of

NORMS = ("pre", "post")


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/p)*(W/p), C*p*p), patches in row-major order."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


class DropPath(Checked, nn.Module):
    """Stochastic depth: in training, zeroes a residual branch for a whole sample with probability
    ``p`` and scales the kept ones by 1 / (1 - p) (expected value unchanged); the identity in eval."""

    SETTINGS = {"drop_path": FRACTION}
    PREFIX = "model."

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.check_settings({"drop_path": p})
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(Checked, nn.Module):
    """Transformer encoder block.

    pre-norm:  x = x + attn(LN1(x));  x = x + mlp(LN2(x))
    post-norm: x = LN1(x + attn(x));  x = LN2(x + mlp(x))

    ``dropout`` acts in the MLP, ``attn_dropout`` on the attention weights, ``drop_path`` drops
    each residual branch per sample (stochastic depth); all are 0 in the study.
    """

    SETTINGS = {"norm": one_of(NORMS), "dropout": FRACTION, "attn_dropout": FRACTION}
    PREFIX = "model."

    def __init__(
        self,
        embed_dim: int,
        hidden_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        norm: str = "pre",
        attention: str = "explicit",
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.check_settings({"norm": norm, "dropout": dropout, "attn_dropout": attn_dropout})
        self.norm = norm
        self.ln1 = nn.LayerNorm(embed_dim)
        self.attn = MultiHeadAttention(embed_dim, num_heads, dropout=attn_dropout, implementation=attention)
        self.ln2 = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, embed_dim),
            nn.Dropout(dropout),
        )
        self.drop_path = DropPath(drop_path)

    def forward(
        self, x: torch.Tensor, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The block's output; with ``return_weights`` also its attention weights (batch, heads,
        tokens, tokens), computed on the explicit path whatever ``attention`` is."""
        h = self.ln1(x) if self.norm == "pre" else x
        attn = self.attn(h, return_weights=return_weights)
        attn, weights = attn if return_weights else (attn, None)
        if self.norm == "pre":
            x = x + self.drop_path(attn)
            x = x + self.drop_path(self.mlp(self.ln2(x)))
        else:
            x = self.ln1(x + self.drop_path(attn))
            x = self.ln2(x + self.drop_path(self.mlp(x)))
        return (x, weights) if return_weights else x


class VisionTransformer(Checked, nn.Module):
    # the input and output layers: AdamW's, not Muon's, with optimizer=muon (lightning_modules/optim.py)
    input_output_modules = ("patch_embed", "head")
    # its own settings; a block's, its attention's and stochastic depth's are checked by their classes
    SETTINGS = {
        "image_size": POSITIVE_INT,
        "patch_size": POSITIVE_INT,
        "in_channels": POSITIVE_INT,
        "num_classes": POSITIVE_INT,
        "hidden_dim": POSITIVE_INT,
        "num_layers": POSITIVE_INT,
    }
    PREFIX = "model."

    @classmethod
    def check_settings(cls, values, prefix=None) -> None:
        super().check_settings(values, prefix)
        for part in (MultiHeadAttention, Block, DropPath):
            part.check_settings(values, prefix)
        prefix = cls.PREFIX if prefix is None else prefix
        image_size, patch_size = values.get("image_size", 32), values.get("patch_size", 4)
        if image_size % patch_size:
            raise invalid(f"{prefix}patch_size", patch_size, f"a divisor of {prefix}image_size={image_size}")

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        num_classes: int = 10,
        embed_dim: int = 256,
        hidden_dim: int = 512,
        num_heads: int = 8,
        num_layers: int = 2,
        dropout: float = 0.0,
        norm: str = "pre",
        attention: str = "explicit",
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.check_settings(
            dict(
                image_size=image_size,
                patch_size=patch_size,
                in_channels=in_channels,
                num_classes=num_classes,
                embed_dim=embed_dim,
                hidden_dim=hidden_dim,
                num_heads=num_heads,
                num_layers=num_layers,
                dropout=dropout,
                norm=norm,
                attention=attention,
                attn_dropout=attn_dropout,
                drop_path=drop_path,
            )
        )
        self.patch_size = patch_size
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(in_channels * patch_size**2, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.dropout = nn.Dropout(dropout)
        # stochastic depth grows linearly with depth: 0 for the first block, drop_path for the last
        rates = [drop_path * i / max(num_layers - 1, 1) for i in range(num_layers)]
        self.blocks = nn.Sequential(
            *(Block(embed_dim, hidden_dim, num_heads, dropout, norm, attention, attn_dropout, rate) for rate in rates)
        )
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def dynamics_blocks(self) -> dict[str, list[str]]:
        """The blocks ``callbacks.dynamics`` measures, input side first: name -> the prefixes of
        their parameters' names (``embed``, ``block<i>``, ``head``)."""
        blocks = {"embed": ["cls_token", "pos_embed", "patch_embed"]}
        blocks.update({f"block{i}": [f"blocks.{i}"] for i in range(len(self.blocks))})
        return {**blocks, "head": ["head"]}

    def ffn_output_weights(self) -> dict[str, nn.Parameter]:
        """Each block's FFN second weight matrix (the MLP's output Linear, hidden -> embed): the
        matrix whose gradient norm Xiong et al. (2020) compare across layers."""
        return {f"block{i}": block.mlp[3].weight for i, block in enumerate(self.blocks)}

    def no_weight_decay(self) -> set[str]:
        """Parameters kept out of weight decay with ``model.no_weight_decay=true`` besides norms and
        biases (timm's convention)."""
        return {"cls_token", "pos_embed"}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> the token sequence entering the first block ([cls] first)."""
        x = self.patch_embed(patchify(images, self.patch_size))
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return self.dropout(torch.cat([cls, x], dim=1) + self.pos_embed)

    def forward(
        self, images: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits; with ``return_attention`` also each block's attention weights, a list of
        (batch, heads, tokens, tokens) tensors (explicit path, whatever ``attention`` is)."""
        x = self.embed(images)
        if not return_attention:
            return self.head(self.blocks(x)[:, 0])
        weights = []
        for block in self.blocks:
            x, w = block(x, return_weights=True)
            weights.append(w)
        return self.head(x[:, 0]), weights
