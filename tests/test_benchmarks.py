"""The benchmarks cannot rot: `make bench` (benchmarks/run_all.py) at tiny settings writes every result file,
each naming the processor it ran on; the GPU check's dry run passes on a CPU machine."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ftcommon.hardware import cpu_has_native_bf16
from services.trainer.compiled_layers import cpu_compiler_available

REPO = Path(__file__).resolve().parent.parent
RESULT_FILES = {
    "data_prep",
    "generate",
    "train_throughput",
    "train_sharing",
    "serve_throughput",
    "eval_throughput",
}


@pytest.mark.slow
def test_every_benchmark_runs_at_tiny_settings(tmp_path, lamini_docs):
    subprocess.run(
        [sys.executable, "benchmarks/run_all.py", "--tiny", "--results-dir", str(tmp_path)],
        cwd=REPO,
        check=True,
        timeout=1800,  # a minute or two on a quiet 2-core machine; far longer beside other work
    )
    results = {path.stem: json.loads(path.read_text()) for path in tmp_path.glob("*.json")}
    assert set(results) == RESULT_FILES
    for name, result in results.items():
        assert result["cpu"]["model"] and "flags" in result["cpu"], name
    native_bf16 = cpu_has_native_bf16()

    train = results["train_throughput"]
    assert "6N per token" in train["flop_formula"] and "4N + 2N_t" in train["flop_formula"]
    assert train["fp32_recipe_lora_packed"]["precision"] == "fp32"
    assert train["recipe_rounds"] == 2
    assert len(train["fp32_recipe_lora_packed"]["rounds_real_tokens_per_second"]) == 2
    assert 0 < train["fp32_recipe_lora_packed"]["mfu"] < 1
    assert ("bf16" in train["matmul_peak_flops"]) == native_bf16
    if native_bf16:
        assert train["bf16_recipe_lora_packed"]["precision"] == "bf16"
        assert train["bf16_recipe_lora_packed"]["mfu_against"] == "bf16 matmul peak"
        assert train["bf16_recipe_lora_packed"]["torch_compile"] is cpu_compiler_available()
        assert train["bf16_eager_recipe_lora_packed"]["torch_compile"] is False
        assert train["speedups_real_tokens_per_second"]["bf16_recipe_vs_bf16_eager_recipe"] > 0

    serve = results["serve_throughput"]
    assert serve["dtypes"] == (["float32", "bfloat16"] if native_bf16 else ["float32"])
    for dtype in serve["dtypes"]:
        gateway = serve["systems"][f"gateway_{dtype}"]
        assert gateway["levels"]["1"]["generated_tokens"] > 0
        assert len(gateway["rounds_tokens_per_second"]["1"]) == serve["rounds"] == 1

    assert results["train_sharing"]["passive"]["pair"][1]["real_tokens_per_second"] > 0
    assert results["data_prep"]["distinct"]["examples_written"] > 0
    assert results["data_prep"]["all_distinct"]["examples_written"] > 0
    generated = results["generate"]["structural"]
    assert generated["pairs_kept"] > 0 and 0 < generated["grounded_pair_yield"] <= 1


@pytest.mark.slow
def test_gpu_check_dry_run_passes_without_a_gpu():
    run = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "dry run: every step is in place" in run.stdout
    for step in ("train_default", "serve_vllm", "invariant_tests"):
        assert f"would run [{step}" in run.stdout


def _train_throughput():
    spec = importlib.util.spec_from_file_location(
        "train_throughput", REPO / "benchmarks" / "train_throughput.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_rounds_alternate_and_report_medians():
    bench = _train_throughput()
    assert bench.round_order(["fp32", "bf16"], 3) == ["fp32", "bf16", "bf16", "fp32", "fp32", "bf16"]
    # tokens/s 100, 300, 200: the median round is the third; a noisy round does not move it.
    fp32 = [
        {"real_tokens": 100, "seconds": 1.0},
        {"real_tokens": 300, "seconds": 1.0},
        {"real_tokens": 400, "seconds": 2.0},
    ]
    bf16 = [
        {"real_tokens": 160, "seconds": 1.0},
        {"real_tokens": 330, "seconds": 1.0},
        {"real_tokens": 320, "seconds": 1.0},
    ]
    median = bench.median_round(fp32)
    assert median["seconds"] == 2.0 and median["rounds_real_tokens_per_second"] == [100, 300, 200]
    # Round ratios 1.6, 1.1, 1.6: the median is 1.6, where the ratio of medians (320 / 200) happens to agree.
    assert bench.median_ratio(bf16, fp32) == pytest.approx(1.6)
    assert bench.median_ratio(bf16[:2], fp32[:2]) == pytest.approx((1.6 + 1.1) / 2)
