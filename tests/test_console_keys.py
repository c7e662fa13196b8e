"""The console's API key pages against a real gateway on loopback: create shows the secret once, the list
shows each key's requests and tokens from the gateway's counters, revoke stops the key; admin role, CSRF, and the
gateway's own message with the request id when it refuses."""

import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from test_console import signed_in

from ftcommon.grpc_server import RunningServer
from services.console.app import create_app
from services.console.config import ConsoleSettings
from services.console.state import ConsoleState
from services.inference.config import InferenceSettings
from services.inference.keys import bootstrap

if TYPE_CHECKING:
    from services.inference.server import InferenceServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory,
    data_root,
    data_server: RunningServer,
    trainer_server: RunningServer,
    inference_server: "InferenceServer",
) -> Iterator[ConsoleState]:
    admin_token = bootstrap(InferenceSettings(data_dir=data_root), "console tests", replace=True)[1]
    settings = ConsoleSettings(
        data_dir=tmp_path_factory.mktemp("console-keys"),
        data_address=data_server.address,
        trainer_address=trainer_server.address,
        eval_address="127.0.0.1:1",
        gateway_url=inference_server.http_url,
        gateway_admin_token=admin_token,
    )
    state = ConsoleState.build(settings)
    yield state
    state.close()


def test_create_use_and_revoke_a_key_from_the_console(
    console: ConsoleState, inference_server: "InferenceServer", monkeypatch: pytest.MonkeyPatch
) -> None:
    client, csrf = signed_in(console, "admin")
    assert "No API keys yet" in client.get("/keys").text or 'id="keys"' in client.get("/keys").text
    reply = client.post(
        "/keys",
        data={"csrf_token": csrf, "name": "console-app", "scopes": ["chat"], "rate_limit_per_minute": ""},
    )
    assert reply.status_code == 200 and reply.headers["cache-control"] == "no-store"
    secret = re.search(r'id="new-secret">([^<]+)<', reply.text).group(1)  # type: ignore[union-attr]
    assert secret.startswith("ft-")
    assert secret not in client.get("/keys").text  # shown once: never again

    # The session's gateway serves without keys; ask it to check them so requests carry this key's id.
    monkeypatch.setattr(inference_server.state.settings, "require_api_key", True)
    gateway = inference_server.http_url
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{gateway}/v1/models", headers=headers).status_code == 200
    refused = httpx.post(
        f"{gateway}/v1/chat/completions",
        headers=headers,
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert refused.status_code == 404
    chats = [
        httpx.post(
            f"{gateway}/v1/chat/completions",
            headers=headers,
            json={
                "model": "smollm2-135m-instruct",
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 4,
                "stream": stream,
                "stream_options": {"include_usage": True} if stream else None,
            },
            timeout=120,
        )
        for stream in (False, True)
    ]
    usages = [chats[0].json()["usage"], stream_usage(chats[1].text)]

    page = client.get("/keys").text
    row = next(r for r in page.split("<tr") if "console-app" in r)
    counts = re.findall(r'<td class="(requests|failed|prompt-tokens|completion-tokens)">(\d+)</td>', row)
    assert counts == [
        ("requests", "4"),
        ("failed", "1"),
        ("prompt-tokens", str(sum(u["prompt_tokens"] for u in usages))),
        ("completion-tokens", str(sum(u["completion_tokens"] for u in usages))),
    ], row
    assert all(u["completion_tokens"] > 0 for u in usages)
    key_id = re.search(r'action="/keys/([^/]+)/revoke"', row).group(1)  # type: ignore[union-attr]
    revoked = client.post(f"/keys/{key_id}/revoke", data={"csrf_token": csrf}, follow_redirects=False)
    assert revoked.status_code == 303
    assert httpx.get(f"{gateway}/v1/models", headers=headers).status_code == 401
    assert "revoked" in next(r for r in client.get("/keys").text.split("<tr") if "console-app" in r)


def stream_usage(events: str) -> dict[str, int]:
    """The usage of a streamed chat completion: its last data chunk's (stream_options.include_usage)."""
    chunks = [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: {")]
    return chunks[-1]["usage"]


def test_keys_need_the_admin_role_and_the_csrf_token(console: ConsoleState) -> None:
    reader, reader_csrf = signed_in(console, "read-only")
    assert reader.get("/keys").status_code == 403
    assert reader.post("/keys", data={"csrf_token": reader_csrf, "name": "x"}).status_code == 403
    assert reader.post("/keys/key-any/revoke", data={"csrf_token": reader_csrf}).status_code == 403
    assert "/keys" not in reader.get("/datasets").text  # no link to a page it cannot open
    admin, _ = signed_in(console, "admin")
    assert admin.post("/keys", data={"name": "no-token"}).status_code == 403
    assert admin.post("/keys/key-any/revoke").status_code == 403


def test_the_gateways_refusal_is_shown_with_its_message_and_request_id(
    console: ConsoleState, tmp_path
) -> None:
    settings = console.settings.model_copy(
        update={"gateway_admin_token": SecretStr("fta-wrong"), "data_dir": tmp_path}
    )
    state = ConsoleState.build(settings)
    try:
        client, _ = signed_in(state, "admin")
        page = client.get("/keys")
        assert page.status_code == 401
        assert "admin token" in page.text and re.search(r"request id <code>[0-9a-f-]{8,}</code>", page.text)
        unconfigured = ConsoleState.build(
            settings.model_copy(update={"gateway_admin_token": SecretStr(""), "data_dir": tmp_path / "bare"})
        )
        try:
            bare, _ = signed_in(unconfigured, "admin")
            assert "FT_CONSOLE_GATEWAY_ADMIN_TOKEN" in bare.get("/keys").text
        finally:
            unconfigured.close()
    finally:
        state.close()


def test_key_pages_need_a_session(console: ConsoleState) -> None:
    reply = TestClient(create_app(console)).get("/keys", follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"].startswith("/login")
