"""Hot swap: moving the served alias while requests stream loses none of them, and new requests get the new
model."""

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from gateway_support import loopback_gateway_settings

from finetune.v1 import registry_pb2, registry_pb2_grpc, trainer_pb2
from services.inference.server import InferenceServer, build_server
from services.trainer.config import DEFAULT_BASE_MODEL_NAME

ALIAS = "swap-test-prod"
COPY_NAME = "smollm2-135m-instruct-copy"  # the same folder under a second name: a second model, cheaply


@pytest.fixture(scope="module")
def gateway(
    data_root: Path, trainer_server, trainer_stub, default_model_dir: Path
) -> Iterator[InferenceServer]:
    trainer_stub.RegisterBaseModel(
        trainer_pb2.RegisterBaseModelRequest(name=COPY_NAME, path=str(default_model_dir)), timeout=120
    )
    trainer_stub.SetAlias(
        trainer_pb2.SetAliasRequest(
            alias=ALIAS, model=DEFAULT_BASE_MODEL_NAME, force=True, reason="swap test"
        )
    )
    settings = loopback_gateway_settings(
        data_root,
        trainer_server.address,
        model=ALIAS,
        max_model_len=512,
        require_api_key=False,
    )
    server = build_server(settings)
    yield server
    server.stop(grace=1)


def test_alias_switch_keeps_requests_in_flight_and_routes_new_ones(gateway, trainer_stub):
    client = openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key="unused", max_retries=0, timeout=300)
    results: list[tuple[str, str | None]] = []
    errors: list[BaseException] = []

    def stream_one(index: int) -> None:
        try:
            stream = client.chat.completions.create(
                model=ALIAS,
                messages=[{"role": "user", "content": f"Count from {index} to {index + 20}."}],
                max_tokens=24,
                temperature=0,
                stream=True,
            )
            model, finish = "", None
            for chunk in stream:
                model = chunk.model
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
            results.append((model, finish))
        except BaseException as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=stream_one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # the streams are running on the first model
    trainer_stub.SetAlias(
        trainer_pb2.SetAliasRequest(alias=ALIAS, model=COPY_NAME, force=True, reason="swap test")
    )

    deadline = time.monotonic() + 120
    served_by = ""
    while time.monotonic() < deadline:
        answer = client.chat.completions.create(
            model=ALIAS, messages=[{"role": "user", "content": "Hi"}], max_tokens=1, temperature=0
        )
        served_by = answer.model
        if served_by == COPY_NAME:
            break
        time.sleep(0.5)
    for thread in threads:
        thread.join()

    assert not errors, errors
    assert len(results) == 4 and all(finish in ("stop", "length") for _, finish in results)
    assert all(model == DEFAULT_BASE_MODEL_NAME for model, _ in results)
    assert served_by == COPY_NAME
    # The previous engine is drained and freed once its streams are done.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        names = {m.name for m in gateway.state.manager.served_models()}
        if names == {COPY_NAME}:
            break
        time.sleep(0.2)
    assert names == {COPY_NAME}


def test_a_rollback_is_followed(gateway, trainer_channel):
    """After the swap above, rolling the alias back to its first revision serves the first model again."""
    registry = registry_pb2_grpc.RegistryServiceStub(trainer_channel)
    history = registry.ListAliasHistory(registry_pb2.ListAliasHistoryRequest(alias=ALIAS)).revisions
    [first] = [r for r in history if r.model_id != history[0].model_id][-1:]
    registry.Rollback(registry_pb2.RollbackRequest(alias=ALIAS, revision=first.revision, reason="swap test"))
    client = openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key="unused", max_retries=0, timeout=300)
    deadline = time.monotonic() + 120
    served_by = ""
    while time.monotonic() < deadline and served_by != DEFAULT_BASE_MODEL_NAME:
        answer = client.chat.completions.create(
            model=ALIAS, messages=[{"role": "user", "content": "Hi"}], max_tokens=1, temperature=0
        )
        served_by = answer.model
        time.sleep(0.5)
    assert served_by == DEFAULT_BASE_MODEL_NAME
