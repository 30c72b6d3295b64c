"""Our ViT vs timm's VisionTransformer built with the same sizes, forward + backward.

The study's ViT (2 layers, d=256, 8 heads, MLP 512, patch 4 on 32x32, cls token, pre-norm) against
``timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=4, embed_dim=256,
depth=2, num_heads=8, mlp_ratio=2, class_token=True, global_pool="token")``, which has the same
parameter count, on one real CIFAR-10 batch of 128. Target: ours (sdpa) / timm <= 1.0; the
explicit path (the study's hand-written attention, the default) is reported beside it.
timm is a benchmark-only extra (``pip install -e ".[bench]"``).

    python bench/vit_vs_timm.py [--layers 2] [--device cuda]
"""

from __future__ import annotations

import common
import torch
import torch.nn.functional as F

from lightning_modules.nets.vit import VisionTransformer


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeats=7)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iters", type=int, default=2, help="fwd+bwd calls per measurement")
    args = common.parse(p)
    try:
        from timm.models.vision_transformer import VisionTransformer as TimmViT
    except ImportError:
        raise SystemExit("timm is not installed: pip install timm (the [bench] extra)") from None
    dev = args.device
    torch.manual_seed(0)
    sizes = dict(embed_dim=256, num_heads=8, num_classes=10)
    nets = {
        "timm": TimmViT(
            img_size=32, patch_size=4, depth=args.layers, mlp_ratio=2.0, class_token=True, global_pool="token", **sizes
        ),
        "ours_explicit": VisionTransformer(num_layers=args.layers, hidden_dim=512, attention="explicit", **sizes),
        "ours_sdpa": VisionTransformer(num_layers=args.layers, hidden_dim=512, attention="sdpa", **sizes),
    }
    params = {k: sum(p.numel() for p in n.parameters()) for k, n in nets.items()}
    assert len(set(params.values())) == 1, f"the nets differ in size: {params}"
    ((x, y),) = common.cifar10_batches(1, args.batch)
    x, y = x.to(dev), y.to(dev)

    def variant(net):
        net.to(dev).train()

        def run():
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()

        return lambda: common.timed(run, args.iters, dev)

    samples = common.paired({k: variant(n) for k, n in nets.items()}, args.repeats, args.warmup)
    common.report(
        "vit_vs_timm_fwd_bwd",
        samples,
        baseline="timm",
        unit="s/iter",
        target=("ours_sdpa", "<=", 1.0),
        out=args.out,
        device=dev,
        layers=args.layers,
        batch=args.batch,
        params=params["timm"],
    )


if __name__ == "__main__":
    main()
