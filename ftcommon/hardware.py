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


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


# The flags that decide how fast torch's CPU kernels run, for benchmark results.
PERFORMANCE_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def cpu_report() -> dict[str, object]:
    """What a benchmark result must say about the processor it ran on."""
    flags = cpu_flags()
    return {
        "model": cpu_model(),
        "flags": [flag for flag in PERFORMANCE_FLAGS if flag in flags],
        "native_bf16": cpu_has_native_bf16(),
        "usable_cpus": usable_cpu_count(),
        "host_cpus": os.cpu_count(),
    }


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


def thread_count(configured: int) -> int:
    """Threads for one compute process: the configured count, or (0) every CPU this process may use."""
    return configured or usable_cpu_count()


def sharing_thread_environment(threads: int) -> dict[str, str]:
    """Environment for a compute child process that may share its CPUs with other jobs. OpenMP reads it once,
    when the library loads, so it must be in place before the child imports torch.

    PASSIVE: a thread that waits at a barrier sleeps instead of spinning. Spinning threads of two trainings
    on the same cores burn each other's time slices (measured with benchmarks/train_sharing.py)."""
    return {"OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}


def configure_torch_threads(threads: int) -> None:
    """Intra-op threads as given; one inter-op thread, since training and serving issue no parallel torch
    ops of their own (jit forks) and every extra pool is one more thread to schedule."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work has started in this process: keep what it has
        pass
