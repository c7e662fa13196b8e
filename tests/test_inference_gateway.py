"""The inference gateway on loopback with the real default model (transformers engine), called through the
official `openai` client, plain HTTP and gRPC."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from gateway_support import loopback_gateway_settings
from transformers import AutoTokenizer

from finetune.v1 import common_pb2, inference_pb2, inference_pb2_grpc, trainer_pb2
from ftcommon.chat_format import prompt_ids, training_example
from ftcommon.grpc_client import open_channel
from services.inference.config import InferenceSettings
from services.inference.server import InferenceServer, build_server, open_key_store
from services.trainer.config import DEFAULT_BASE_MODEL_NAME

ALIAS = "gateway-test-prod"  # never set: the gateway serves the fallback (the default base model)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def settings(data_root: Path, trainer_server) -> InferenceSettings:
    return loopback_gateway_settings(
        data_root,
        trainer_server.address,
        model=ALIAS,
        max_model_len=1024,
        max_request_bytes=64 * 1024,
        blocked_topics=[r"\bpoker\b"],
    )


@pytest.fixture(scope="module")
def gateway(settings: InferenceSettings) -> Iterator[InferenceServer]:
    server = build_server(settings)
    yield server
    server.stop(grace=1)


@pytest.fixture(scope="module")
def api_key(settings: InferenceSettings, gateway: InferenceServer) -> str:
    _, secret = open_key_store(settings).create("tests")
    return secret


@pytest.fixture(scope="module")
def client(gateway: InferenceServer, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path):
    return AutoTokenizer.from_pretrained(default_model_dir)


def ask(client: openai.OpenAI, messages=QUESTION, **kwargs):
    kwargs.setdefault("max_tokens", 12)
    return client.chat.completions.create(model=ALIAS, messages=messages, temperature=0, **kwargs)


def test_chat_completion_answers_and_counts_tokens(client, tokenizer, trainer_stub):
    response = ask(client)
    choice = response.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert response.model == DEFAULT_BASE_MODEL_NAME
    template = trainer_stub.GetModel(trainer_pb2.GetModelRequest(name=DEFAULT_BASE_MODEL_NAME)).chat_template
    assert response.usage.prompt_tokens == len(prompt_ids(tokenizer, QUESTION, template))
    assert 0 < response.usage.completion_tokens <= 12


def test_served_prompt_is_the_trained_prompt_token_for_token(client, tokenizer, trainer_stub):
    model = trainer_stub.GetModel(trainer_pb2.GetModelRequest(name=DEFAULT_BASE_MODEL_NAME))
    conversation = [
        {"role": "system", "content": "You answer questions about Lamini."},
        {"role": "user", "content": "What is Lamini?"},
        {"role": "assistant", "content": "An LLM platform."},
        {"role": "user", "content": "Can it fine-tune?"},
    ]
    response = ask(client, conversation, max_tokens=4, extra_body={"return_token_ids": True})
    served = response.model_extra["prompt_token_ids"]
    assert served == prompt_ids(tokenizer, conversation, model.chat_template)
    # What data prep trains on for the same conversation plus an answer starts with exactly these tokens.
    trained, labels = training_example(
        tokenizer,
        [*conversation, {"role": "assistant", "content": "Yes."}],
        model.eos_token,
        model.chat_template,
    )
    assert trained[: len(served)] == served
    assert all(label == -100 for label in labels[len(served) - 1 : len(served)])


def test_generation_stops_at_the_end_of_turn_token(client):
    # A prompt whose greedy answer is short in every precision the engine may pick: "Say hello." got 34
    # tokens in bfloat16 on an AVX512-BF16 CPU without AMX; this one gets "Hello." (3) in both dtypes there.
    response = ask(client, [{"role": "user", "content": "Reply with the single word: hello"}], max_tokens=32)
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert response.usage.completion_tokens < 32
    assert "<|im_end|>" not in choice.message.content and "<|im_start|>" not in choice.message.content


def test_streaming_chat_equals_the_whole_answer(client):
    whole = ask(client).choices[0].message.content
    stream = ask(client, stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0


def test_completions_continue_a_raw_prompt(client):
    response = client.completions.create(model=ALIAS, prompt="One, two, three,", max_tokens=6, temperature=0)
    assert response.choices[0].text.strip()
    assert response.usage.prompt_tokens > 0
    assert response.choices[0].finish_reason in ("stop", "length")


def test_models_list_names_the_alias_and_the_model(client):
    names = {model.id for model in client.models.list().data}
    assert {ALIAS, DEFAULT_BASE_MODEL_NAME} <= names


def test_sixteen_concurrent_requests_are_batched(gateway, api_key):
    async def run_all() -> list:
        questions = [f"Give me one word about the number {i}." for i in range(16)]
        async with openai.AsyncOpenAI(
            base_url=f"{gateway.http_url}/v1", api_key=api_key, max_retries=0, timeout=300
        ) as async_client:
            return await asyncio.gather(
                *[
                    async_client.chat.completions.create(
                        model=ALIAS, messages=[{"role": "user", "content": q}], max_tokens=8, temperature=0
                    )
                    for q in questions
                ]
            )

    responses = asyncio.run(run_all())
    assert len(responses) == 16
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in responses)
    assert gateway.state.manager.default.engine.stats().max_batch_size > 1


def test_requests_without_a_valid_key_get_401(gateway, settings, client):
    for key in ("", "ft-not-a-real-key"):
        response = httpx.post(
            f"{gateway.http_url}/v1/chat/completions",
            json={"messages": QUESTION, "max_tokens": 2},
            headers={"Authorization": f"Bearer {key}"} if key else {},
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    store = open_key_store(settings)
    key, secret = store.create("soon revoked")
    revoked_client = openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key=secret, max_retries=0)
    assert revoked_client.models.list().data
    store.revoke(key.id)
    with pytest.raises(openai.AuthenticationError):
        revoked_client.models.list()


def test_rate_limit_answers_429_with_retry_after(gateway, settings):
    _, secret = open_key_store(settings).create("limited", rate_limit_per_minute=2)
    headers = {"Authorization": f"Bearer {secret}"}
    statuses = [httpx.get(f"{gateway.http_url}/v1/models", headers=headers) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert int(statuses[2].headers["Retry-After"]) >= 1
    assert statuses[2].json()["error"]["type"] == "rate_limit_error"


def test_context_overflow_is_400_naming_the_limit(client):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, max_tokens=5000)
    assert "maximum context length is 1024 tokens" in err.value.message


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": QUESTION, "max_tokens": -1}, "max_tokens"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": []}, "messages"),
        ({"messages": QUESTION, "temperature": 5}, "temperature"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(gateway, api_key, body, param):
    response = httpx.post(
        f"{gateway.http_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {api_key}"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"].startswith(param)


def test_oversized_body_is_413_and_cors_stays_closed(gateway, api_key):
    response = httpx.post(
        f"{gateway.http_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x" * 70_000}]},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert response.status_code == 413
    preflight = httpx.options(
        f"{gateway.http_url}/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_topic_policy_refuses_before_generating(client, settings):
    response = ask(client, [{"role": "user", "content": "How do I win at poker?"}])
    assert response.choices[0].message.content == settings.refusal_message
    assert response.usage.completion_tokens == 0


def test_health_readiness_and_metrics(gateway, client):
    ask(client, max_tokens=2)
    assert httpx.get(f"{gateway.http_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.http_url}/readyz").json()
    assert ready["status"] == "ready" and ready["engine"] == "transformers"
    text = httpx.get(f"{gateway.http_url}/metrics").text
    assert 'gateway_http_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert "gateway_time_to_first_token_seconds_count" in text
    assert 'gateway_loaded_model{engine="transformers",model_id=' in text
    assert "gateway_generated_tokens_total" in text


@pytest.fixture(scope="module")
def inference_stub(gateway: InferenceServer) -> Iterator[inference_pb2_grpc.InferenceServiceStub]:
    with open_channel(gateway.grpc_address) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


def grpc_request(max_tokens: int = 8) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role="user", content="What is the capital of France?")],
        sampling=inference_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )


def test_grpc_generate_and_stream_agree(inference_stub, client):
    whole = inference_stub.Generate(grpc_request(), timeout=120)
    assert "Paris" in whole.text and whole.completion_tokens > 0 and whole.prompt_tokens > 0
    assert whole.finish_reason in (inference_pb2.FINISH_REASON_STOP, inference_pb2.FINISH_REASON_LENGTH)
    assert whole.text == ask(client, max_tokens=8).choices[0].message.content
    chunks = list(inference_stub.GenerateStream(grpc_request(), timeout=120))
    assert "".join(c.text for c in chunks) == whole.text
    assert chunks[-1].finish_reason == whole.finish_reason


def test_grpc_score_prefers_the_right_answer(inference_stub):
    context = [common_pb2.ChatMessage(role="user", content="What is the capital of France?")]
    response = inference_stub.Score(
        inference_pb2.ScoreRequest(
            items=[
                inference_pb2.ScoreItem(context=context, continuation="The capital of France is Paris."),
                inference_pb2.ScoreItem(context=context, continuation="The capital of France is Banana."),
            ]
        ),
        timeout=120,
    )
    right, wrong = response.results
    assert right.tokens > 0 and wrong.tokens > 0
    assert 0 > right.logprob > wrong.logprob


def test_grpc_rejects_bad_requests_and_lists_models(inference_stub):
    with pytest.raises(grpc.RpcError) as err:
        inference_stub.Generate(
            inference_pb2.GenerateRequest(
                messages=[common_pb2.ChatMessage(role="wizard", content="hi")],
                sampling=inference_pb2.SamplingParams(max_tokens=4),
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        inference_stub.Generate(inference_pb2.GenerateRequest(model="no-such-model", prompt="hi"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    served = inference_stub.ListModels(inference_pb2.ListServedModelsRequest()).models
    assert any(m.name == DEFAULT_BASE_MODEL_NAME and ALIAS in m.aliases for m in served)
