"""What a speed figure was measured on: the CPU model, its vector extensions, its cores and the load."""
from __future__ import annotations

import os
import re


def cpu_description() -> str:
    """`AMD EPYC, 2 cores, avx avx2 avx512f … fma` from /proc/cpuinfo (the CPU model elsewhere)."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            text = handle.read()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = found.group(1).strip() if found else model
        first = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        flags = set(first.group(1).split()) if first else set()
    except OSError:
        pass
    vector = sorted(f for f in flags if re.fullmatch(r"avx[0-9a-z_]*|fma|f16c|amx[a-z_0-9]*|sse4_2", f))
    return f"{model}, {os.cpu_count()} cores, {' '.join(vector) or 'vector extensions unknown'}"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` gives them."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"
