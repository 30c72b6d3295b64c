"""The study's Vision Transformer: shapes, parameter counts, block formulas."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.nets.vit import Block, VisionTransformer, patchify
from tests.helpers import assert_close_rel


@pytest.mark.parametrize("layers,expected", [(2, 1_086_730), (4, 2_140_938), (6, 3_195_146)])
def test_parameter_counts_match_the_study(layers, expected):
    for norm in ("pre", "post"):
        net = VisionTransformer(num_layers=layers, norm=norm)
        assert sum(p.numel() for p in net.parameters() if p.requires_grad) == expected


def test_output_shape_and_patches():
    net = VisionTransformer(num_layers=1)
    images = torch.randn(3, 3, 32, 32)
    assert net(images).shape == (3, 10)
    patches = patchify(images, 4)
    assert patches.shape == (3, 64, 48)
    # patch 1 is the 4x4 block at rows 0-3, columns 4-7 of every channel
    torch.testing.assert_close(patches[:, 1], images[:, :, 0:4, 4:8].reshape(3, 48))


def _reference_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """The block's formula with independent ops: F.layer_norm, nn.MultiheadAttention, F.gelu."""
    d = x.shape[-1]
    mha = nn.MultiheadAttention(d, block.attn.num_heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(block.attn.qkv.weight)
        mha.in_proj_bias.copy_(block.attn.qkv.bias)
        mha.out_proj.weight.copy_(block.attn.out_proj.weight)
        mha.out_proj.bias.copy_(block.attn.out_proj.bias)
    mha.eval()

    def ln(m, t):
        return F.layer_norm(t, (d,), m.weight, m.bias, m.eps)

    def attn(t):
        return mha(t, t, t, need_weights=False)[0]

    fc1, fc2 = block.mlp[0], block.mlp[3]

    def mlp(t):
        return F.linear(F.gelu(F.linear(t, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)

    if block.norm == "pre":
        x = x + attn(ln(block.ln1, x))
        return x + mlp(ln(block.ln2, x))
    x = ln(block.ln1, x + attn(x))
    return ln(block.ln2, x + mlp(x))


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_block_matches_its_formula(norm):
    torch.manual_seed(0)
    block = Block(embed_dim=32, hidden_dim=64, num_heads=4, norm=norm).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for ln in (block.ln1, block.ln2):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 7, 32)
    assert_close_rel(block(x), _reference_block(block, x))


def test_pre_and_post_norm_differ():
    torch.manual_seed(0)
    pre = Block(16, 32, 2, norm="pre").eval()
    post = Block(16, 32, 2, norm="post").eval()
    post.load_state_dict(pre.state_dict())
    x = torch.randn(1, 5, 16)
    assert not torch.allclose(pre(x), post(x))


def test_sdpa_and_explicit_models_agree():
    torch.manual_seed(0)
    a = VisionTransformer(num_layers=2, attention="explicit").eval()
    b = VisionTransformer(num_layers=2, attention="sdpa").eval()
    b.load_state_dict(a.state_dict())
    images = torch.randn(4, 3, 32, 32)
    assert_close_rel(a(images), b(images))


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="model.patch_size=5: must be a divisor of model.image_size=32"):
        VisionTransformer(image_size=32, patch_size=5)
    with pytest.raises(ValueError, match="model.norm='middle': must be one of pre, post"):
        Block(16, 32, 2, norm="middle")
