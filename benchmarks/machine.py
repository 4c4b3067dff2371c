"""What a speed figure was measured on: the CPU, its vector extensions, the ISA caps in force, the load.

Imported by the benchmarks (run from the repository root: `python benchmarks/NAME.py`), so that
every figure is printed beside the machine that produced it.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

# The vector extensions that decide which kernels oneDNN, XLA and PyTorch pick.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "amx_tile")
# Environment variables that cap or change the kernels chosen: printed when set.
ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "XLA_FLAGS", "TF_ENABLE_ONEDNN_OPTS", "ATEN_CPU_CAPABILITY",
                 "OMP_NUM_THREADS")


def cpu_description() -> str:
    """'MODEL, N cores, vector extensions: ...' from /proc/cpuinfo (the platform's name elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    vector = [f for f in VECTOR_FLAGS if f in flags]
    return f"{model}, {os.cpu_count()} cores, vector extensions: {' '.join(vector) or 'unknown'}"


def isa_caps() -> str:
    """The kernel-choosing variables set in this process ('none set' when none is)."""
    set_ = [f"{name}={os.environ[name]}" for name in ISA_VARIABLES if os.environ.get(name)]
    return ", ".join(set_) or "none set"


def load() -> str:
    """The 1-, 5- and 15-minute load averages, as `uptime` prints them."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def matmul_gflops(size: int = 2048, seconds: float = 1.0) -> float:
    """float32 GFLOP/s of a large matrix product (NumPy's BLAS, every core): the best of repeated timings."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9
