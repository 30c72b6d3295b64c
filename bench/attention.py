"""Our multi-head attention (explicit and sdpa paths) vs torch.nn.MultiheadAttention.

Forward + backward of self-attention, d=256, 8 heads, 65 tokens (64 patches + cls), batch 128:
the ViT's shape. Target: sdpa path / torch <= 1.0. torch's module is called with
``need_weights=False`` (its fast path, through scaled_dot_product_attention).

    python bench/attention.py [--repeats 9] [--device cuda]
"""

from __future__ import annotations

import common  # noqa: F401  (puts the repo root on sys.path)
import torch
from torch import nn

from lightning_modules.nets.attention import MultiHeadAttention


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeats=9)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--tokens", type=int, default=65)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--iters", type=int, default=5, help="fwd+bwd calls per measurement")
    args = common.parse(p)
    dev = args.device
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.tokens, args.dim, device=dev, requires_grad=True)
    torch_mha = nn.MultiheadAttention(args.dim, args.heads, batch_first=True).to(dev)
    ours = {
        impl: MultiHeadAttention(args.dim, args.heads, implementation=impl).to(dev) for impl in ("explicit", "sdpa")
    }
    for m in ours.values():  # same weights as torch's (in_proj = our qkv)
        with torch.no_grad():
            m.qkv.weight.copy_(torch_mha.in_proj_weight)
            m.qkv.bias.copy_(torch_mha.in_proj_bias)
            m.out_proj.weight.copy_(torch_mha.out_proj.weight)
            m.out_proj.bias.copy_(torch_mha.out_proj.bias)
    ref = torch_mha(x, x, x, need_weights=False)[0]
    for m in ours.values():  # same function, so the timing compares like with like
        torch.testing.assert_close(m(x), ref, atol=1e-4, rtol=1e-4)

    def step(fn):
        def run():
            fn().sum().backward()

        return lambda: common.timed(run, args.iters, dev)

    variants = {
        "torch_mha": step(lambda: torch_mha(x, x, x, need_weights=False)[0]),
        "ours_explicit": step(lambda: ours["explicit"](x)),
        "ours_sdpa": step(lambda: ours["sdpa"](x)),
    }
    samples = common.paired(variants, args.repeats, args.warmup)
    common.report(
        "attention_fwd_bwd",
        samples,
        baseline="torch_mha",
        unit="s/iter",
        target=("ours_sdpa", "<=", 1.0),
        out=args.out,
        device=dev,
        shape=dict(batch=args.batch, tokens=args.tokens, dim=args.dim, heads=args.heads),
    )


if __name__ == "__main__":
    main()
