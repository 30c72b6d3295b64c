"""Training processes side by side on one CPU: how many threads each should use.

    python bench/side_by_side.py [--jobs 2] [--steps 20] [--repeats 3] [--warmup 1]

Every PyTorch process starts one thread per core. Two of them at once on the same cores share each
core between two OpenMP teams whose threads spin while they wait for each other. Each round runs
``--jobs`` processes of the study's ViT training step (Table 2 config 2: the plain step of
bench/cpu_step.py, real CIFAR-10 batches, bf16 autocast where the CPU computes bf16, as train.py
picks) and reports the seconds for every job to take one step (the slowest job's time over its
steps; the processes wait at a barrier, so only their steps overlap). Variants, alternated ABBA:

- ``share`` (baseline): ``OMP_NUM_THREADS`` = cores // jobs in each process;
- ``all_cores``: torch's default, each process one thread per core;
- ``all_cores_passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep);
- ``one_after_another``: one job at a time with every core (the jobs' steps summed);
- ``one_after_another_passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (what sleeping waiters
  cost a job that has the cores to itself).

``hydra/launcher=joblib`` gives its jobs their share of the cores (joblib sets the thread limits of
its worker processes), and the test suite gives each pytest-xdist worker its share
(tests/conftest.py); two ``python train.py`` commands started by hand do neither.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

VARIANTS = ("share", "all_cores", "all_cores_passive", "one_after_another", "one_after_another_passive")


def worker(steps: int, ready: Path, go: Path) -> None:
    """One job: build the step, say it is ready, wait for the start, print seconds for ``steps`` steps."""
    import torch
    from cpu_step import step_fn, vit_case
    from hydra.utils import instantiate

    from lmvit.hardware import bf16_capable

    make, loss, data = vit_case(2)
    net, cfg = make("explicit")
    net.train()
    opt = instantiate(cfg.optimizer)(net.parameters())
    fns = [step_fn(net, opt, loss, b, bf16_capable()) for b in data]
    for f in fns:  # unmeasured: the first steps allocate
        f()
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
    start = time.perf_counter()
    for i in range(steps):
        fns[i % len(fns)]()
    print(time.perf_counter() - start, torch.get_num_threads(), flush=True)


def run_round(variant: str, jobs: int, steps: int, cores: int) -> float:
    """Seconds for each of the ``jobs`` processes to take one step, under ``variant``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if variant == "share":
        env["OMP_NUM_THREADS"] = str(max(1, cores // jobs))
    elif variant.endswith("_passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    together = not variant.startswith("one_after_another")
    with tempfile.TemporaryDirectory() as tmp:
        go, seconds = Path(tmp) / "go", []
        batches = [list(range(jobs))] if together else [[j] for j in range(jobs)]
        for batch in batches:
            go.unlink(missing_ok=True)
            procs = []
            for j in batch:
                ready = Path(tmp) / f"ready{j}"
                cmd = [sys.executable, __file__, "--worker", str(steps), str(ready), str(go)]
                procs.append((subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True), ready))
            while not all(r.exists() for _, r in procs):
                if any(p.poll() not in (None, 0) for p, _ in procs):
                    raise SystemExit(f"side_by_side: a {variant} job failed")
                time.sleep(0.05)
            go.touch()
            times = [float(p.communicate()[0].split()[0]) for p, _ in procs]
            seconds.append(max(times))
    return sum(seconds) / steps


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeats=3, warmup=1)
    p.add_argument("--jobs", type=int, default=2, help="processes at once")
    p.add_argument("--steps", type=int, default=20, help="training steps each job times")
    args = common.parse(p)
    cores = len(os.sched_getaffinity(0))
    variants = {v: (lambda v=v: run_round(v, args.jobs, args.steps, cores)) for v in VARIANTS}
    samples = common.paired(variants, args.repeats, args.warmup)
    common.report(
        "side_by_side",
        samples,
        baseline="share",
        unit=f"s for each of {args.jobs} jobs to take one ViT step",
        out=args.out,
        jobs=args.jobs,
        steps=args.steps,
        usable_cores=cores,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
