"""Run-time hardware facts: bf16 support from the CPU's flags, usable CPUs from affinity and cgroup quota."""

import os
from pathlib import Path

from ftcommon.hardware import NATIVE_BF16_FLAGS, cgroup_cpu_quota, cpu_flags, usable_cpu_count

ZEN3_FLAGS = "fpu vme sse sse2 avx avx2 fma bmi2"
SAPPHIRE_RAPIDS_FLAGS = ZEN3_FLAGS + " avx512f avx512bw avx512_bf16 amx_bf16 amx_tile"


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    return path


def test_native_bf16_only_with_its_flags(tmp_path):
    (tmp_path / "zen3").mkdir()
    assert not cpu_flags(cpuinfo(tmp_path / "zen3", ZEN3_FLAGS)) & NATIVE_BF16_FLAGS
    assert cpu_flags(cpuinfo(tmp_path, SAPPHIRE_RAPIDS_FLAGS)) & NATIVE_BF16_FLAGS == NATIVE_BF16_FLAGS


def test_unreadable_cpuinfo_means_no_flags(tmp_path):
    assert cpu_flags(tmp_path / "absent") == frozenset()


def test_cgroup_quota(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert cgroup_cpu_quota(cpu_max) == 1.5
    cpu_max.write_text("max 100000\n")
    assert cgroup_cpu_quota(cpu_max) is None
    assert cgroup_cpu_quota(tmp_path / "absent") is None


def test_usable_cpus_never_exceed_the_affinity_mask():
    assert 1 <= usable_cpu_count() <= len(os.sched_getaffinity(0))
