"""The CPU setting a run gets by default: bf16 autocast where the processor computes bf16 (decided
from its flags, never by trying), fused optimizer kernels on the CPU, and the peak FLOP/s that
bench/cpu_step.py reports the step against."""

from __future__ import annotations

import functools

import pytest
import torch

from lightning_modules.callbacks.timing import device_name
from lightning_modules.optim import build_optimizer, kernel_in_use, optimizer_kernel
from lmvit.errors import ConfigError
from lmvit.hardware import BF16_FLAGS, auto_precision, bf16_capable, cpu_name, cpuinfo, peak_flops


@pytest.mark.parametrize("flag", BF16_FLAGS)
def test_a_cpu_with_bf16_instructions_trains_in_bf16(flag):
    precision, why = auto_precision("auto", cuda_available=False, flags={"avx512f", flag})
    assert precision == "bf16-mixed" and flag in why
    assert bf16_capable({flag})


def test_a_cpu_without_them_falls_back_to_fp32_by_its_flags():
    precision, why = auto_precision("cpu", cuda_available=False, flags={"avx512f", "avx2"})
    assert precision == "32-true" and "no bf16" in why
    assert not bf16_capable({"avx512f", "avx2"})


@pytest.mark.parametrize(("accelerator", "cuda"), [("gpu", False), ("cuda", True), ("auto", True)])
def test_a_gpu_keeps_the_study_fp32(accelerator, cuda):
    assert auto_precision(accelerator, cuda_available=cuda, flags=set(BF16_FLAGS))[0] == "32-true"


def test_the_cpu_is_named_with_its_family_model_and_bf16_instructions():
    """A virtual machine's model name alone ("Intel(R) Xeon(R) Processor") can name CPUs of different
    speed: runs (time/device) and benchmarks record family/model and the bf16 instructions too."""
    fields = {}  # the first processor's block of /proc/cpuinfo, read here independently
    for line in open("/proc/cpuinfo", encoding="utf-8").read().split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in fields["flags"].split()]
    want = f"{fields['model name']} ({fields['vendor_id']} {fields['cpu family']}/{fields['model']}, "
    assert cpu_name() == want + ("+".join(bf16) or "no bf16") + ")"
    if not torch.cuda.is_available():
        assert device_name() == cpu_name()


def test_peak_is_cores_times_clock_times_flops_per_cycle():
    mhz = float(cpuinfo().get("cpu MHz", "0") or 0)
    for flags, fp32, bf16 in (
        ({"avx2"}, 32, 0),
        ({"avx2", "avx512f"}, None, None),  # 32 on AMD family 25 (two 256-bit pipes), 64 elsewhere
        ({"avx512f", "avx512_bf16"}, None, None),
    ):
        peak = peak_flops(cores=3, flags=flags)
        per_cycle = peak["fp32_flop_per_cycle"]
        if fp32 is not None:
            assert per_cycle == fp32 and peak["bf16_flop_per_cycle"] == bf16
        else:
            assert per_cycle in (32, 64)
        assert peak["bf16_flop_per_cycle"] == (2 * per_cycle if "avx512_bf16" in flags else 0)
        assert peak["fp32"] == pytest.approx(3 * mhz * 1e6 * per_cycle, rel=1e-12)
        assert peak["bf16"] == pytest.approx(3 * mhz * 1e6 * peak["bf16_flop_per_cycle"], rel=1e-12)


def adamw(**keywords):
    return functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=5e-4, **keywords)


@pytest.mark.parametrize(
    ("factory", "device", "kernel"),
    [
        (adamw(), "cpu", "fused"),  # torch's CPU default is a loop over tensors
        (adamw(), "cuda", "default"),  # CUDA keeps torch's choice (foreach)
        (adamw(fused=False), "cpu", "default"),
        (adamw(foreach=True), "cpu", "foreach"),
        (functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), "cpu", "fused"),
        (functools.partial(torch.optim.NAdam, lr=1e-3), "cpu", "default"),  # no fused kernel
        (lambda groups: torch.optim.AdamW(groups, lr=1e-3), "cpu", "default"),  # a callable decides
    ],
)
def test_optimizer_kernel(factory, device, kernel):
    assert optimizer_kernel(factory, device) == kernel


def test_clipped_gradients_keep_the_loop():
    """Lightning refuses to clip a fused optimizer's gradients: with trainer.gradient_clip_val the
    default stays torch's loop, and an explicit optimizer.fused=true is refused in one line."""
    assert optimizer_kernel(adamw(), "cpu", clips_gradients=True) == "default"
    net = torch.nn.Linear(4, 2)
    assert kernel_in_use(build_optimizer(adamw(), net, clips_gradients=True)) == "default"
    with pytest.raises(ConfigError, match="optimizer.fused=true with trainer.gradient_clip_val"):
        optimizer_kernel(adamw(fused=True), "cpu", clips_gradients=True)


def test_the_fused_cpu_step_is_the_loop_step():
    """The default CPU optimizer (fused) moves the weights as torch's loop implementation does."""

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4)
        )

    net, loop_net, start = make(), make(), make()
    fused = build_optimizer(adamw(), net)
    loop = build_optimizer(adamw(foreach=False, fused=False), loop_net)
    assert all(g["fused"] for g in fused.param_groups)
    assert not any(g["fused"] or g["foreach"] for g in loop.param_groups)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    for _ in range(5):
        for model, opt in ((net, fused), (loop_net, loop)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for (name, a), b, a0 in zip(net.named_parameters(), loop_net.parameters(), start.parameters()):
        assert not torch.equal(a, a0), name  # the weights moved
        # the same update up to fp32 rounding: within 1e-4 of one step's size (lr 1e-2)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_a_resumed_optimizer_keeps_its_checkpoints_kernel():
    """metrics.json records the kernel the step runs (RunSummary, at train start): a run resumed from
    a checkpoint of the loop keeps the loop, whatever the default is now."""
    net = torch.nn.Linear(4, 2)
    loop = build_optimizer(adamw(fused=False), net)
    assert kernel_in_use(loop) == "default"
    fused = build_optimizer(adamw(), net)
    assert kernel_in_use(fused) == "fused"
    fused.load_state_dict(loop.state_dict())
    assert kernel_in_use(fused) == "default"
    assert kernel_in_use(build_optimizer(adamw(foreach=True), net)) == "foreach"
