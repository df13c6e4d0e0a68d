"""What the machine is and what it can do: device peaks and memory, host memory and load, the
software versions. Facts a benchmark reports beside its timings."""

import os
import platform
import resource
import sys
from typing import Any

import flax
import jax
import jaxlib

# Dense peak TFLOP/s by device, from the vendors' data sheets (NVIDIA H100/H200/A100/L4
# product pages; "dense" = without structured sparsity). bfloat16 compares with the bf16
# tensor-core peak; float32 with the TF32 tensor-core peak, which XLA's default precision
# uses for float32 convolutions and matmuls on these GPUs. Matched by substring of
# `device.device_kind`, first match wins.
PEAK_TFLOPS = (
    ("H200", {"bfloat16": 989.4, "float32": 494.7}),
    ("H100 PCIe", {"bfloat16": 756.5, "float32": 378.0}),
    ("H100 NVL", {"bfloat16": 835.5, "float32": 417.5}),
    ("H100", {"bfloat16": 989.4, "float32": 494.7}),  # SXM
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("L4", {"bfloat16": 121.0, "float32": 60.0}),
)
PEAK_SOURCE = (
    "vendor data-sheet dense peaks (NVIDIA); float32 against the TF32 tensor-core "
    "peak; none known for CPUs"
)


def peak_tflops(device: jax.Device, dtype: str) -> float | None:
    """The vendor's dense peak for `device` in `dtype`, or None (CPUs, unknown devices)."""
    if device.platform != "gpu":
        return None
    for pattern, peaks in PEAK_TFLOPS:
        if pattern in device.device_kind:
            return peaks.get(dtype)
    return None


def host_peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def device_memory_mb(device: jax.Device) -> dict | None:
    """The device allocator's statistics in MiB, where the backend has them (GPU/TPU)."""
    stats = device.memory_stats()
    if not stats:
        return None
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {key.replace("bytes", "mb"): stats[key] / 2**20 for key in keys if key in stats}


def executable_memory_mb(compiled) -> dict | None:
    """XLA's memory analysis of one compiled step, in MiB (None where the backend has none)."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # pylint: disable=broad-except
        return None
    if analysis is None:
        return None
    mib = 2**20
    out = {
        "arguments_mb": analysis.argument_size_in_bytes / mib,
        "outputs_mb": analysis.output_size_in_bytes / mib,
        "aliased_mb": analysis.alias_size_in_bytes / mib,
        "temp_mb": analysis.temp_size_in_bytes / mib,
    }
    peak = getattr(analysis, "peak_memory_in_bytes", 0)
    if peak:
        out["peak_mb"] = peak / mib
    return out


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    """The host CPU's model name ("AMD EPYC", ...): CPU rates differ by maker and generation."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, Any]:
    """Versions, backend, devices and XLA flags this run measured."""
    device = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "peak_source": PEAK_SOURCE,
    }
