"""Run-time hardware facts: bf16 support from the CPU's flags, usable CPUs from affinity and cgroup quota."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftcommon.hardware import (
    NATIVE_BF16_FLAGS,
    cgroup_cpu_quota,
    cpu_flags,
    cpu_model,
    cpu_report,
    thread_count,
    usable_cpu_count,
)
from services.trainer.config import TrainerSettings
from services.trainer.worker import TrainingSupervisor

REPO_ROOT = Path(__file__).resolve().parent.parent

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
    assert cpu_model(tmp_path / "absent") == "unknown"


def test_cpu_report_names_the_model_and_the_flags_that_matter(tmp_path):
    assert cpu_model(cpuinfo(tmp_path, SAPPHIRE_RAPIDS_FLAGS)) == "test"
    report = cpu_report()
    assert set(report) == {"model", "flags", "native_bf16", "usable_cpus", "host_cpus"}
    assert report["native_bf16"] == bool(set(report["flags"]) & NATIVE_BF16_FLAGS)


def test_cgroup_quota(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert cgroup_cpu_quota(cpu_max) == 1.5
    cpu_max.write_text("max 100000\n")
    assert cgroup_cpu_quota(cpu_max) is None
    assert cgroup_cpu_quota(tmp_path / "absent") is None


def test_usable_cpus_never_exceed_the_affinity_mask():
    assert 1 <= usable_cpu_count() <= len(os.sched_getaffinity(0))


def test_thread_count_is_the_setting_or_every_usable_cpu():
    assert thread_count(0) == usable_cpu_count()
    assert thread_count(3) == 3


def test_training_processes_get_threads_that_sleep_when_they_wait(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = TrainingSupervisor(TrainerSettings(data_dir=tmp_path, torch_threads=1))._child_env()
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["OMP_NUM_THREADS"] == "1"
    # An operator's own OpenMP settings win.
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert TrainingSupervisor(TrainerSettings(data_dir=tmp_path))._child_env()["OMP_WAIT_POLICY"] == "ACTIVE"


def test_torch_threads_as_configured_with_one_inter_op_thread():
    code = (
        "from ftcommon.hardware import configure_torch_threads; import torch; configure_torch_threads(1); "
        "print(torch.get_num_threads(), torch.get_num_interop_threads())"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    ).stdout
    assert output.split() == ["1", "1"]


def test_vllm_is_bound_to_as_many_cpus_as_it_may_use(tmp_path, monkeypatch):
    from services.inference.engine.vllm_engine import configure_environment

    names = ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_KVCACHE_SPACE", "TMPDIR")
    names += ("HF_HUB_OFFLINE", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "VLLM_NO_USAGE_STATS")
    for name in names:  # restored after the test
        monkeypatch.delenv(name, raising=False)
    allowed = sorted(os.sched_getaffinity(0))
    configure_environment(tmp_path, 1, threads=len(allowed))
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ  # vLLM's own binding covers every allowed CPU
    if len(allowed) < 2:
        pytest.skip("one usable CPU: no fewer threads to bind to")
    configure_environment(tmp_path, 1, threads=1)
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == str(allowed[0])
