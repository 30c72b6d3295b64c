"""What the CPU can do, read from the machine (``/proc/cpuinfo``), never by trying and crashing.

``cpu_flags()`` and ``bf16_capable()`` decide the default CPU precision (``trainer.precision=auto``:
see :func:`auto_precision`); ``peak_flops()`` is the machine's limit that ``bench/cpu_step.py``
reports the training step against.
"""

from __future__ import annotations

import os
from functools import cache

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # bf16 dot products in hardware (AVX512-BF16, Intel AMX)


@cache
def cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_name() -> str:
    """The CPU's model name and, after it, vendor, family/model and bf16 instructions from
    ``/proc/cpuinfo`` (a virtual machine's model name, e.g. "Intel(R) Xeon(R) Processor", can name
    CPUs that differ in speed and instructions); "" where there is no /proc/cpuinfo."""
    info = cpuinfo()
    if not info:
        return ""
    bf16 = [f for f in BF16_FLAGS if f in cpu_flags()]
    return (
        f"{info.get('model name', 'unknown CPU')} ({info.get('vendor_id', '?')} "
        f"{info.get('cpu family', '?')}/{info.get('model', '?')}, {'+'.join(bf16) or 'no bf16'})"
    )


def cpu_flags() -> set[str]:
    return set(cpuinfo().get("flags", "").split())


def bf16_capable(flags: set[str] | None = None) -> bool:
    """The CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16): bf16 autocast is fast there."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def auto_precision(accelerator: str, cuda_available: bool, flags: set[str] | None = None) -> tuple[str, str]:
    """``trainer.precision=auto``: (precision, why). On a GPU the study's fp32 (unchanged); on a CPU
    with bf16 in hardware ``bf16-mixed`` (autocast: matrix products in bf16, weights, optimizer and
    reductions in fp32; measured 2x faster for the ViT step, same accuracy: docs/performance.md),
    else fp32."""
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda_available)
    if on_gpu:
        return "32-true", "on a GPU the default stays the study's fp32 (trainer.precision=bf16-mixed is faster)"
    if bf16_capable(flags):
        found = next(f for f in BF16_FLAGS if f in (cpu_flags() if flags is None else flags))
        return "bf16-mixed", f"the CPU has {found}"
    return "32-true", "the CPU has no bf16 instructions (avx512_bf16 / amx_bf16)"


def peak_flops(cores: int | None = None, flags: set[str] | None = None) -> dict[str, float | str]:
    """The machine's peak FLOP/s for fp32 and bf16: cores x clock x FLOPs per cycle per core.

    FLOPs per cycle from the vector units (an FMA counts 2): AVX-512 on AMD family 25 (Zen 4: two
    256-bit FMA pipes) 32 fp32 / 64 bf16 (vdpbf16ps); AMD family 26 (Zen 5) and Intel AVX-512 (two
    512-bit FMA units) 64 / 128; AVX2 only: 32 / none. The clock is ``cpu MHz`` of /proc/cpuinfo
    (the current clock; a boost clock would raise the peak)."""
    info = cpuinfo()
    flags = cpu_flags() if flags is None else flags
    cores = cores or len(os.sched_getaffinity(0))
    mhz = float(info.get("cpu MHz", "0") or 0)
    family = int(info.get("cpu family", "0") or 0)
    amd = "AMD" in info.get("vendor_id", "") or "AMD" in info.get("model name", "")
    if "avx512f" in flags:
        fp32 = 32 if (amd and family == 25) else 64
    elif "avx2" in flags:
        fp32 = 32
    else:
        fp32 = 8
    bf16 = 2 * fp32 if bf16_capable(flags) else 0
    hz = mhz * 1e6
    return {
        "cores": cores,
        "clock_ghz": round(mhz / 1000, 3),
        "fp32_flop_per_cycle": fp32,
        "bf16_flop_per_cycle": bf16,
        "fp32": cores * hz * fp32,
        "bf16": cores * hz * bf16,
        "how": f"{cores} cores x {mhz:.0f} MHz (/proc/cpuinfo) x FLOP/cycle/core "
        f"({fp32} fp32, {bf16} bf16: {'AMD family ' + str(family) if amd else 'vector units'})",
    }
