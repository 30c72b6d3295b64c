"""Optimizers: step time and optimizer-state memory of every conf/optimizer/*.yaml, relative to AdamW.

The study's ViT (2 layers, d=256, 8 heads, batch 128; ``--layers`` to change) on real CIFAR-10
batches held in memory. Every optimizer gets its own copy of the same initial net, built exactly as
``train.py`` builds it (the config's partial through ``lightning_modules.optim.build_optimizer``:
lr_scale, Muon's split), and the variants alternate in one process (ABBA rounds, bench/common.py),
so a shared machine's drift lands on all alike. Two timings per variant and round:

* ``step``: a whole training step (zero_grad, forward, backward, optimizer step): what a run feels;
* ``opt``: the optimizer step alone, ``--opt-steps`` steps on fixed gradients per round (20: SOAP
  refreshes its preconditioners every 10 steps, so its average includes them), in its own paired
  rounds (``--opt-repeats``): a few milliseconds, so it can be measured far more steadily than
  the whole step on a shared CPU.

Memory is exact, not sampled: the bytes of every tensor in ``optimizer.state`` after ``--settle``
steps (SOAP builds its preconditioners at its first step), relative to AdamW's (2 x the
parameters: exp_avg and exp_avg_sq).

    python bench/optimizers.py --repeats 3 [--threads 1] [--out logs/bench/results.jsonl]
"""

from __future__ import annotations

import copy
import time

import common
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lightning_modules.nets.vit import VisionTransformer
from lightning_modules.optim import build_optimizer, has_modes

# every conf/optimizer/*.yaml, AdamW (the baseline) first
OPTIMIZERS = ["adamw"] + sorted(
    p.stem for p in (common.ROOT / "conf" / "optimizer").glob("*.yaml") if p.stem != "adamw"
)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor held in the optimizer's state (nested containers included)."""
    seen: set[int] = set()

    def walk(value) -> int:
        if isinstance(value, torch.Tensor):
            if id(value) in seen:
                return 0
            seen.add(id(value))
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(walk(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(walk(v) for v in value)
        return 0

    return sum(walk(s) for s in optimizer.state.values())


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeats=3, warmup=1)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--settle", type=int, default=2, help="steps before measuring the state's bytes")
    p.add_argument("--optimizers", nargs="+", default=OPTIMIZERS)
    p.add_argument("--opt-steps", type=int, default=20, help="optimizer steps per opt-only measurement")
    p.add_argument("--opt-repeats", type=int, default=5, help="paired rounds of the opt-only measurement")
    args = common.parse(p)
    device = torch.device(args.device)

    with initialize_config_dir(str(common.ROOT / "conf"), version_base="1.3"):
        cfgs = {
            name: compose("train", overrides=[f"optimizer={name}", f"model.num_layers={args.layers}"])
            for name in args.optimizers
        }
    model_cfg = cfgs[args.optimizers[0]].model
    net_kwargs = {
        k: model_cfg[k]
        for k in (
            "image_size",
            "patch_size",
            "num_classes",
            "embed_dim",
            "hidden_dim",
            "num_heads",
            "num_layers",
            "norm",
            "attention",
        )
    }
    batch_size = cfgs[args.optimizers[0]].data.batch_size
    batches = [(x.to(device), y.to(device)) for x, y in common.cifar10_batches(2, batch_size)]

    torch.manual_seed(0)
    initial = VisionTransformer(**net_kwargs).to(device)
    params = sum(p.numel() for p in initial.parameters())
    nets, optimizers, memory = {}, {}, {}
    for name in args.optimizers:
        net = copy.deepcopy(initial)
        optimizer = build_optimizer(instantiate(cfgs[name].optimizer), net, no_weight_decay=False)
        if has_modes(optimizer):
            optimizer.train()
        nets[name], optimizers[name] = net, optimizer

    step_no = {name: 0 for name in args.optimizers}

    def train_step(name: str) -> float:
        net, optimizer = nets[name], optimizers[name]
        x, y = batches[step_no[name] % len(batches)]
        step_no[name] += 1
        common.synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        common.synchronize(device)
        return time.perf_counter() - start

    def opt_steps(name: str) -> float:  # the gradients of the last training step stay in place
        return common.timed(optimizers[name].step, args.opt_steps, device)

    for name in args.optimizers:  # the state's bytes once settled (unmeasured steps)
        for _ in range(args.settle):
            train_step(name)
        memory[name] = state_bytes(optimizers[name])

    baseline = "adamw"
    opt_samples = common.paired(
        {name: (lambda n=name: opt_steps(n)) for name in args.optimizers}, repeats=args.opt_repeats, warmup=1
    )
    common.report(
        "optimizers_opt_step",
        opt_samples,
        baseline=baseline,
        unit="s/optimizer step",
        out=args.out,
        device=args.device,
        opt_steps=args.opt_steps,
        params=params,
    )
    samples = common.paired(
        {name: (lambda n=name: train_step(n)) for name in args.optimizers}, repeats=args.repeats, warmup=args.warmup
    )
    common.report(
        "optimizers",
        samples,
        baseline=baseline,
        unit="s/step",
        out=args.out,
        device=args.device,
        state_bytes=memory,
        state_ratio={k: round(v / memory[baseline], 3) for k, v in memory.items()},
        state_per_param={k: round(v / params / 4, 3) for k, v in memory.items()},
        params=params,
        layers=args.layers,
        batch_size=batch_size,
    )


if __name__ == "__main__":
    main()
