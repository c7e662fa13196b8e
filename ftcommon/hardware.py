"""What the processor this process runs on offers: native bf16 arithmetic and the CPUs it may use.

The machines this platform runs on change under it (an AVX2 Zen 3 without bf16, an AVX-512 EPYC with
AVX512-BF16, a Xeon with AMX), so precision and thread counts are chosen here at run time, never assumed.
"""

import os
from functools import cache
from pathlib import Path

# x86 flags (as /proc/cpuinfo names them) for bf16 computed in hardware. Without them oneDNN emulates bf16
# and a bf16 step runs about 22x slower than fp32 (measured on a Zen 3, STACK.md).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's feature flags; empty where /proc/cpuinfo does not list them."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)


def cgroup_cpu_quota(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """CPUs granted by a cgroup v2 quota (a container's `--cpus`), or None without a quota."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def usable_cpu_count() -> int:
    """CPUs this process may run on: its affinity mask, bounded by a cgroup quota. Sizing thread pools
    by the host's core count instead makes two jobs on one host spin against each other."""
    count = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, int(quota)))
    return max(1, count)
