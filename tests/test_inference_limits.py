"""The gateway under overload and through the CLI: a bounded queue that refuses the overflow with 503 and
Retry-After while every admitted request completes, and `ftctl chat` streaming an answer or failing readably.
One dedicated gateway (transformers engine, one batch slot, two admission places, API keys required)."""

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import torch
from gateway_support import loopback_gateway_settings
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from ftctl.main import app as ftctl_app
from services.inference.config import InferenceSettings
from services.inference.server import InferenceServer, build_server, open_key_store

ALIAS = "limits-test-prod"  # never set: the gateway serves the fallback (the default base model)
MAX_QUEUE = 2
BURST = 8
CHAT_ROUTE = "/v1/chat/completions"


@pytest.fixture(scope="module")
def settings(data_root: Path, trainer_server) -> InferenceSettings:
    return loopback_gateway_settings(
        data_root,
        trainer_server.address,
        model=ALIAS,
        max_model_len=512,
        max_queue=MAX_QUEUE,
        max_batch_size=1,  # the second admitted request waits for the first: the queue really fills
        # One thread: on a shared two-core host, two spinning OpenMP threads make each step ten times slower.
        torch_threads=1,
    )


@pytest.fixture(scope="module")
def gateway(settings: InferenceSettings) -> Iterator[InferenceServer]:
    threads = torch.get_num_threads()  # the engine sets the process-wide count; later tests get it back
    server = build_server(settings)
    yield server
    server.stop(grace=1)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def api_key(settings: InferenceSettings, gateway: InferenceServer) -> str:
    _, secret = open_key_store(settings).create("limits tests")
    return secret


def metric_value(text: str, sample_name: str, **labels: str) -> float:
    """One sample of the Prometheus exposition text; 0 when the labelled series does not exist yet."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def stream_answer(client: openai.AsyncOpenAI, question: str, max_tokens: int) -> tuple[str, str | None]:
    """The streamed text and finish reason of one request; raises the client's error if it is refused."""
    stream = await client.chat.completions.create(
        model=ALIAS,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    )
    text, finish = "", None
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, finish


async def burst_while_watching_metrics(
    gateway: InferenceServer, api_key: str
) -> tuple[list[tuple[str, str | None] | BaseException], list[str]]:
    """Fires BURST concurrent streaming requests and scrapes /metrics until they are all answered."""
    questions = [f"Count from {i} to {i + 40}, separated by commas." for i in range(BURST)]
    scrapes: list[str] = []
    async with (
        openai.AsyncOpenAI(
            base_url=f"{gateway.http_url}/v1", api_key=api_key, max_retries=0, timeout=120
        ) as client,
        httpx.AsyncClient(base_url=gateway.http_url, timeout=30) as scraper,
    ):
        requests = asyncio.gather(
            *[stream_answer(client, q, max_tokens=16) for q in questions], return_exceptions=True
        )
        while not requests.done():
            scrapes.append((await scraper.get("/metrics")).text)
            await asyncio.sleep(0.02)
        return await requests, scrapes


def test_overflow_beyond_the_queue_gets_503_and_every_admitted_request_completes(gateway, api_key):
    before = httpx.get(f"{gateway.http_url}/metrics").text

    results, scrapes = asyncio.run(burst_while_watching_metrics(gateway, api_key))

    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, openai.InternalServerError) for r in refused), refused
    # The first MAX_QUEUE arrivals are always admitted; the burst lands well within one generation.
    assert len(answered) >= MAX_QUEUE and len(refused) >= 1
    for text, finish in answered:
        assert text.strip() and finish in ("stop", "length")
    for error in refused:
        assert error.status_code == 503
        assert int(error.response.headers["Retry-After"]) >= 1
        assert error.type == "service_unavailable"
        assert "at capacity" in error.message

    # While one request decodes in the only batch slot, the other admitted one waits in the queue; never more
    # than MAX_QUEUE are in flight at once.
    assert max(metric_value(s, "gateway_queue_depth") for s in scrapes) >= 1
    assert max(metric_value(s, "gateway_requests_in_flight") for s in scrapes) <= MAX_QUEUE
    after = httpx.get(f"{gateway.http_url}/metrics").text
    assert metric_value(after, "gateway_queue_depth") == 0
    assert metric_value(after, "gateway_requests_in_flight") == 0

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("gateway_rejected_total", reason="queue_full") == len(refused)
    assert delta("gateway_http_requests_total", route=CHAT_ROUTE, status="503") == len(refused)
    assert delta("gateway_http_requests_total", route=CHAT_ROUTE, status="200") == len(answered)


def test_places_refused_or_finished_are_free_again(gateway, api_key):
    """Nothing leaks a queue place: after the burst, MAX_QUEUE requests at once are all admitted."""

    async def fill_the_queue() -> list[tuple[str, str | None]]:
        async with openai.AsyncOpenAI(
            base_url=f"{gateway.http_url}/v1", api_key=api_key, max_retries=0, timeout=120
        ) as client:
            return await asyncio.gather(
                *[stream_answer(client, "Say hi.", max_tokens=4) for _ in range(MAX_QUEUE)]
            )

    assert all(finish in ("stop", "length") for _, finish in asyncio.run(fill_the_queue()))


def run_chat(gateway: InferenceServer, api_key: str, *args: str):
    return CliRunner().invoke(
        ftctl_app,
        ["chat", "--model", ALIAS, *args],
        env={"FT_GATEWAY_URL": gateway.http_url, "FT_API_KEY": api_key},
    )


def test_ftctl_chat_streams_the_answer(gateway, api_key):
    result = run_chat(gateway, api_key, "--max-tokens", "12", "What is the capital of France?")
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout
    assert result.stdout.endswith("\n") and not result.stderr


def test_ftctl_chat_with_a_bad_key_fails_readably(gateway):
    result = run_chat(gateway, "ft-not-a-real-key", "Hello?")
    assert result.exit_code == 1
    assert not result.stdout
    error = " ".join(result.stderr.split())
    assert error.startswith("error 401: Incorrect or missing API key")
    assert "ftctl keys create" in error and "FT_API_KEY" in error


@contextmanager
def socket_closed_port() -> Iterator[str]:
    """A loopback URL whose port is held but not listening, so connections are refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_ftctl_chat_without_a_gateway_fails_readably(api_key):
    with socket_closed_port() as url:
        result = CliRunner().invoke(
            ftctl_app, ["chat", "Hello?"], env={"FT_GATEWAY_URL": url, "FT_API_KEY": api_key}
        )
    assert result.exit_code == 1
    error = " ".join(result.stderr.split())
    assert f"cannot reach the gateway at {url}" in error and "FT_GATEWAY_URL" in error
