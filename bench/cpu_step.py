"""The real training step on the CPU, fp32 eager (today's default) against the faster settings.

    python bench/cpu_step.py                 # ViT (Table 2 config 2) and LSTM (Table 1 config 1)
    python bench/cpu_step.py --case vit --repeats 7 --compile   # + torch.compile (inductor; minutes to build)
    python bench/cpu_step.py --case vit --optimizer-impl         # + AdamW's foreach and fused kernels

One plain PyTorch step (forward, backward, AdamW) of the study's nets on real batches, each variant
with its own copy of the net and optimizer, alternated ABBA in one process (bench/common.py). Per
variant: seconds per step, the paired ratio to fp32 eager, the step's FLOPs (counted once with
torch.utils.flop_counter.FlopCounterMode: forward and backward), achieved FLOP/s and the fraction of
the machine's peak for that precision (lmvit.hardware.peak_flops: cores x clock x FLOP/cycle, stated
in the line). The Lightning step around the same net: bench/trainer_overhead.py with the same
``trainer.precision`` override.
"""

from __future__ import annotations

import contextlib
import copy

import common
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

from lmvit.hardware import peak_flops


def vit_case(batches: int):
    with initialize_config_dir(str(common.ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=vit", "optimizer=adamw", "paths.output_dir=/tmp"])
    data = common.cifar10_batches(batches, cfg.data.batch_size)

    def make(attention: str):
        torch.manual_seed(0)
        return instantiate(cfg.model, attention=attention).net, cfg

    def loss(net, batch):
        x, y = batch
        return F.cross_entropy(net(x), y)

    return make, loss, data


def lstm_case(batches: int):
    with initialize_config_dir(str(common.ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train", overrides=["model=lstm", "optimizer=adamw", "data=wikitext2_offline", "paths.output_dir=/tmp"]
        )
    dm = instantiate(cfg.data, data_dir=str(common.data_dir()), num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    data = [b for _, b in zip(range(batches), dm.train_dataloader())]

    def make(attention: str):
        torch.manual_seed(0)
        return instantiate(cfg.model, vocab_size=dm.vocab_size).net, cfg

    def loss(net, batch):
        from lightning_modules.language_model import masked_nll

        source, target, mask = batch
        total, count = masked_nll(net(source), target, mask)
        return total / count.clamp_min(1)

    return make, loss, data


def step_fn(net, optimizer, loss, batch, bf16: bool):
    def step():
        optimizer.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            value = loss(net, batch)
        value.backward()
        optimizer.step()

    return step


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeats=5, warmup=1)
    p.add_argument("--case", choices=["vit", "lstm", "both"], default="both")
    p.add_argument("--steps", type=int, default=3, help="steps per measurement")
    p.add_argument("--compile", action="store_true", help="also torch.compile (inductor), fp32 and bf16")
    p.add_argument(
        "--optimizer-impl",
        action="store_true",
        help="also bf16 with AdamW's foreach and fused implementations (the CPU default is a loop over tensors)",
    )
    args = common.parse(p)
    peak = peak_flops()
    for case in ["vit", "lstm"] if args.case == "both" else [args.case]:
        make, loss, data = (vit_case if case == "vit" else lstm_case)(args.steps)
        # name: (attention, bf16, compiled, optimizer keywords)
        variants = {"fp32": ("explicit", False, False, {}), "bf16": ("explicit", True, False, {})}
        if case == "vit":
            variants |= {"fp32_sdpa": ("sdpa", False, False, {}), "bf16_sdpa": ("sdpa", True, False, {})}
        if args.compile:  # one factor at a time, then combined
            variants |= {"fp32_compiled": ("explicit", False, True, {}), "bf16_compiled": ("explicit", True, True, {})}
        if args.optimizer_impl:
            variants |= {
                "bf16_foreach": ("explicit", True, False, {"foreach": True}),
                "bf16_fused": ("explicit", True, False, {"fused": True}),
            }
        nets, steps = {}, {}
        for name, (attention, bf16, compiled, impl) in variants.items():
            net, cfg = make(attention)
            if name != "fp32":
                net.load_state_dict(nets["fp32"].state_dict())
            net.train()
            nets[name] = net
            opt = instantiate(cfg.optimizer)(net.parameters(), **impl)
            run = torch.compile(net) if compiled else net
            fns = [step_fn(run, opt, loss, b, bf16) for b in data]
            steps[name] = fns

        def measure(fns):
            return lambda: common.timed(lambda: [f() for f in fns], 1) / len(fns)

        samples = common.paired({k: measure(v) for k, v in steps.items()}, args.repeats, args.warmup)
        counter = FlopCounterMode(display=False)
        probe = copy.deepcopy(nets["fp32"])
        with counter:
            loss(probe, data[0]).backward()
        flops = counter.get_total_flops()
        achieved = {}
        for name, times in samples.items():
            t = sorted(times)[len(times) // 2]
            limit = peak["bf16"] if variants[name][1] else peak["fp32"]
            achieved[name] = {
                "gflop_per_s": round(flops / t / 1e9, 1),
                "fraction_of_peak": round(flops / t / limit, 3) if limit else None,
            }
        common.report(
            f"cpu_step_{case}",
            samples,
            baseline="fp32",
            unit="s/step",
            target=("bf16", "<=", 0.5 if case == "vit" else 0.7),
            out=args.out,
            step_gflop=round(flops / 1e9, 2),
            achieved=achieved,
            peak={**peak, "fp32": round(peak["fp32"] / 1e9, 1), "bf16": round(peak["bf16"] / 1e9, 1)},  # GFLOP/s
        )


if __name__ == "__main__":
    main()
