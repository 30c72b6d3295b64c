"""Optimizers: step time and optimizer-state memory of every conf/optimizer/*.yaml, relative to AdamW.

The model of a workload of the tuning (``--workload``, conf/tuning/space.yaml: ``vit`` is Table 2
config 2's ViT, 2 layers, d=256, 8 heads, batch 128, ``--layers`` to change; ``lstm`` is Table 1
config 1's LSTM, batch 16, on the offline split), composed from that workload's overrides exactly as
its runs compose it, precision and gradient clipping included (``budget=cpu``: bf16 autocast), on
real batches held in memory. Every optimizer gets its own copy of the same initial net, built as
``train.py`` builds it (the config's partial through ``lightning_modules.optim.build_optimizer``:
lr_scale, Muon's split, the fused kernel where the run uses it), and the variants alternate in one
process (ABBA rounds, bench/common.py), so a shared machine's drift lands on all alike. Two timings
per variant and round:

* ``step``: a whole training step (zero_grad, forward, backward, clipping where the run clips,
  optimizer step): what a run feels; its paired ratio to AdamW is the time per step that
  ``python -m analysis.tuning report --bench`` divides the step speed-up by (per workload);
* ``opt``: the optimizer step alone, ``--opt-steps`` steps on fixed gradients per round (20: SOAP
  refreshes its preconditioners every 10 steps, so its average includes them), in its own paired
  rounds (``--opt-repeats``): a few milliseconds, so it can be measured far more steadily than
  the whole step on a shared CPU.

Memory is exact, not sampled: the bytes of every tensor in ``optimizer.state`` after ``--settle``
steps (SOAP builds its preconditioners at its first step), relative to AdamW's (2 x the
parameters: exp_avg and exp_avg_sq).

    python bench/optimizers.py --workload vit --repeats 3 [--threads 1] [--out logs/bench/results.jsonl]
    python bench/optimizers.py --workload lstm --optimizers adamw sgd lion --repeats 2
"""

from __future__ import annotations

import contextlib
import copy
import time

import common
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from pytorch_lightning.plugins.precision import MixedPrecision

from analysis.tuning import load_space, workload_config
from lightning_modules.optim import build_optimizer, has_modes

# every conf/optimizer/*.yaml, AdamW (the baseline) first
OPTIMIZERS = ["adamw"] + sorted(
    p.stem for p in (common.ROOT / "conf" / "optimizer").glob("*.yaml") if p.stem != "adamw"
)
WORKLOADS = sorted(load_space()["workloads"])


def workload_configs(workload: str, optimizers: list[str], layers: int | None):
    """Each optimizer's composed config: the workload's base overrides (as its tuning runs) + optimizer=."""
    base = list(workload_config(load_space(), workload)["base"])
    base += ["paths.output_dir=/tmp", f"data.data_dir={common.data_dir()}"]
    if layers is not None:
        base.append(f"model.num_layers={layers}")
    with initialize_config_dir(str(common.ROOT / "conf"), version_base="1.3"):
        return {name: compose("train", overrides=base + [f"optimizer={name}"]) for name in optimizers}


def workload_module(cfg, n_batches: int):
    """The composed config's LightningModule (whose ``step`` is the runs' loss) and real batches."""
    if cfg.task == "lstm":
        dm = instantiate(cfg.data, num_workers=0)
        dm.prepare_data()
        dm.setup("fit")
        batches = [b for _, b in zip(range(n_batches), dm.train_dataloader())]
        return instantiate(cfg.model, vocab_size=dm.vocab_size), batches
    return instantiate(cfg.model), common.cifar10_batches(n_batches, cfg.data.batch_size)


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
    p.add_argument("--workload", choices=WORKLOADS, default="vit", help="a workload of conf/tuning/space.yaml")
    p.add_argument("--layers", type=int, default=None, help="the model's num_layers (default: the workload's)")
    p.add_argument("--settle", type=int, default=2, help="steps before measuring the state's bytes")
    p.add_argument("--optimizers", nargs="+", default=OPTIMIZERS, choices=OPTIMIZERS, metavar="NAME")
    p.add_argument("--opt-steps", type=int, default=20, help="optimizer steps per opt-only measurement")
    p.add_argument("--opt-repeats", type=int, default=5, help="paired rounds of the opt-only measurement")
    args = common.parse(p)
    if args.optimizers[0] != "adamw":
        p.error("--optimizers: the first must be adamw (the baseline of the ratios)")
    device = torch.device(args.device)

    cfgs = workload_configs(args.workload, args.optimizers, args.layers)
    first = cfgs[args.optimizers[0]]
    precision = str(first.trainer.precision)
    clip = first.trainer.get("gradient_clip_val")
    autocast = (  # as Lightning's precision plugin autocasts the training step
        MixedPrecision(precision, device.type).autocast_context_manager()
        if precision.endswith("-mixed")
        else contextlib.nullcontext()
    )
    torch.manual_seed(0)  # the same initial net for every optimizer (each gets a copy)
    module, batches = workload_module(first, 2)
    batches = [tuple(t.to(device) for t in b) for b in batches]
    module = module.to(device)
    initial = module.net
    no_weight_decay = bool(first.model.no_weight_decay)
    params = sum(p.numel() for p in initial.parameters())
    nets, optimizers, memory = {}, {}, {}
    for name in args.optimizers:
        net = copy.deepcopy(initial)
        optimizer = build_optimizer(instantiate(cfgs[name].optimizer), net, no_weight_decay, bool(clip))
        if has_modes(optimizer):
            optimizer.train()
        nets[name], optimizers[name] = net, optimizer

    step_no = {name: 0 for name in args.optimizers}

    def train_step(name: str) -> float:
        net, optimizer = nets[name], optimizers[name]
        batch = batches[step_no[name] % len(batches)]
        step_no[name] += 1
        common.synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = module.step(batch, "train", net=net)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
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
        workload=args.workload,
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
        workload=args.workload,
        layers=int(first.model.num_layers),
        batch_size=int(first.data.batch_size),
        precision=precision,
        gradient_clip_val=clip,
    )


if __name__ == "__main__":
    main()
