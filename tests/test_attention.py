"""Hand-written multi-head attention against torch.nn.MultiheadAttention and itself."""

import pytest
import torch
from torch import nn

from lightning_modules.nets.attention import MultiHeadAttention
from tests.helpers import assert_close_rel


def copy_into_torch_mha(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(ours.embed_dim, ours.num_heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)  # rows: Q, then K, then V
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    return ref


@pytest.mark.parametrize("d,heads", [(8, 2), (64, 4), (256, 8), (96, 3)])
def test_parameter_count_is_4d_d_plus_1(d, heads):
    mha = MultiHeadAttention(d, heads)
    assert sum(p.numel() for p in mha.parameters()) == 4 * d * (d + 1)


@pytest.mark.parametrize("implementation", ["explicit", "sdpa"])
def test_matches_torch_multihead_attention_forward_and_input_grad(implementation):
    torch.manual_seed(0)
    ours = MultiHeadAttention(64, 8, implementation=implementation).eval()
    ref = copy_into_torch_mha(ours).eval()
    x = torch.randn(4, 17, 64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = ours(x)
    out_ref, _ = ref(x_ref, x_ref, x_ref, need_weights=False)
    assert_close_rel(out, out_ref)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    out_ref.backward(grad_out)
    assert_close_rel(x.grad, x_ref.grad)


def test_attention_weights_match_torch_average():
    torch.manual_seed(1)
    ours = MultiHeadAttention(32, 4).eval()
    ref = copy_into_torch_mha(ours).eval()
    x = torch.randn(2, 9, 32)
    _, weights = ours(x, return_weights=True)
    _, ref_weights = ref(x, x, x, need_weights=True, average_attn_weights=False)
    assert_close_rel(weights, ref_weights)


def test_explicit_equals_sdpa_including_gradients():
    torch.manual_seed(2)
    explicit = MultiHeadAttention(256, 8, implementation="explicit")
    sdpa = MultiHeadAttention(256, 8, implementation="sdpa")
    sdpa.load_state_dict(explicit.state_dict())
    x = torch.randn(3, 65, 256)
    out_e, out_s = explicit(x), sdpa(x)
    assert_close_rel(out_e, out_s)
    out_e.square().sum().backward()
    out_s.square().sum().backward()
    for (name, p_e), p_s in zip(explicit.named_parameters(), sdpa.parameters()):
        assert_close_rel(p_e.grad, p_s.grad, rtol=1e-4, msg=name)


def test_attention_weights_are_a_distribution():
    mha = MultiHeadAttention(48, 6)
    _, weights = mha(torch.randn(5, 11, 48), return_weights=True)
    assert weights.shape == (5, 6, 11, 11)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(5, 6, 11))


def test_split_and_merge_heads_are_inverse_and_slice_channels():
    mha = MultiHeadAttention(12, 3)
    x = torch.arange(2 * 5 * 12, dtype=torch.float32).reshape(2, 5, 12)
    heads = mha.split_heads(x)
    assert heads.shape == (2, 3, 5, 4)
    # head h holds channels [4h, 4h + 4)
    torch.testing.assert_close(heads[:, 1], x[..., 4:8])
    torch.testing.assert_close(mha.merge_heads(heads), x)


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"model.num_heads=\d+: must be a divisor of model.embed_dim="):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="model.attention=.*one of explicit, sdpa"):
        MultiHeadAttention(8, 2, implementation="flash")
