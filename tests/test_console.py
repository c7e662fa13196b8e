"""The console's handlers against real data and trainer services on loopback: sign-in, CSRF, roles,
an upload's validation report, and the registry's refusal of a promotion without evidence."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient

from ftcommon.grpc_server import RunningServer
from services.console.app import create_app
from services.console.config import ConsoleSettings
from services.console.security import SESSION_COOKIE
from services.console.state import ConsoleState

if TYPE_CHECKING:
    from services.inference.server import InferenceServer

BAD_CSV = (
    "question,answer\n"
    "What is LoRA?,A low-rank adapter method.\n"
    ",An answer without a question.\n"
    "How do I prepare data?,Upload it and run prepare.\n"
)


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory, data_server: RunningServer, trainer_server: RunningServer
) -> Iterator[ConsoleState]:
    settings = ConsoleSettings(
        data_dir=tmp_path_factory.mktemp("console"),
        data_address=data_server.address,
        trainer_address=trainer_server.address,
        eval_address="127.0.0.1:1",  # nothing listens: these tests never reach the eval service
    )
    state = ConsoleState.build(settings)
    yield state
    state.close()


def signed_in(console: ConsoleState, role: str) -> tuple[TestClient, str]:
    """A client with a session for a new operator of `role`, and that session's CSRF token."""
    _, token = console.accounts.create_operator(f"{role} tester", role)  # type: ignore[arg-type]
    client = TestClient(create_app(console))
    form = client.get("/login").text
    login_csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    reply = client.post(
        "/login", data={"token": token, "csrf_token": login_csrf, "next": "/jobs"}, follow_redirects=False
    )
    assert reply.status_code == 303 and reply.headers["location"] == "/jobs"
    assert SESSION_COOKIE in client.cookies
    page = client.get("/datasets").text
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    return client, csrf


def test_pages_require_sign_in_and_a_wrong_token_is_refused(console: ConsoleState) -> None:
    client = TestClient(create_app(console))
    for path in ("/datasets", "/jobs", "/models", "/playground"):
        reply = client.get(path, follow_redirects=False)
        assert reply.status_code == 303 and reply.headers["location"].startswith("/login"), path
    form = client.get("/login").text
    login_csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    reply = client.post("/login", data={"token": "ftc_not-a-token", "csrf_token": login_csrf})
    assert reply.status_code == 401 and "unknown or revoked" in reply.text
    assert client.post("/datasets/upload", files={"file": ("x.csv", BAD_CSV)}).status_code == 401


def test_state_changing_requests_without_the_csrf_token_are_refused(console: ConsoleState) -> None:
    client, csrf = signed_in(console, "admin")
    reply = client.post("/models/promote", data={"model": "smollm2-135m-instruct", "alias": "prod"})
    assert reply.status_code == 403 and "CSRF" in reply.text
    reply = client.post(
        "/datasets/upload", files={"file": ("x.csv", BAD_CSV)}, headers={"X-CSRF-Token": "forged"}
    )
    assert reply.status_code == 403
    assert client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert client.get("/datasets", follow_redirects=False).status_code == 303  # the session is gone


def test_read_only_operators_cannot_promote_or_upload(console: ConsoleState) -> None:
    client, csrf = signed_in(console, "read-only")
    assert client.get("/models").status_code == 200
    reply = client.post(
        "/models/promote", data={"csrf_token": csrf, "model": "smollm2-135m-instruct", "alias": "prod"}
    )
    assert reply.status_code == 403 and "read-only" in reply.text
    reply = client.post(
        "/datasets/upload", files={"file": ("x.csv", BAD_CSV)}, headers={"X-CSRF-Token": csrf}
    )
    assert reply.status_code == 403


def test_upload_shows_the_rejected_rows_with_line_and_reason(console: ConsoleState) -> None:
    client, csrf = signed_in(console, "admin")
    reply = client.post(
        "/datasets/upload",
        files={"file": ("faq.csv", BAD_CSV, "text/csv")},
        data={"name": "faq"},
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    assert reply.status_code == 200, reply.text
    page = client.get(reply.json()["url"])
    assert page.status_code == 200
    rejected = page.text.split('id="rejected"')[1].split("</table>")[0]
    assert "<td>3</td>" in rejected and "question" in rejected  # line 3 has no question
    assert "faq" in client.get("/datasets").text


def test_promotion_without_evidence_shows_the_registry_refusal_and_request_id(console: ConsoleState) -> None:
    client, csrf = signed_in(console, "admin")
    reply = client.post(
        "/models/promote",
        data={"csrf_token": csrf, "model": "smollm2-135m-instruct", "alias": "console-test"},
    )
    assert reply.status_code == 409
    refusal = reply.text.split('id="promote-refusal"')[1].split("</div>\n</div>")[0]
    assert "FAILED_PRECONDITION" in refusal
    assert re.search(r"request id <code>[0-9a-f-]{8,}</code>", refusal)


def test_the_job_event_relay_names_a_missing_job(console: ConsoleState) -> None:
    client, _ = signed_in(console, "read-only")
    reply = client.get("/jobs/job-missing/events")
    assert reply.status_code == 200 and "event: failure" in reply.text and "request_id" in reply.text


def test_bootstrap_prints_a_token_that_signs_in(
    console: ConsoleState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.console.accounts import main

    monkeypatch.setenv("FT_CONSOLE_DATA_DIR", str(tmp_path))
    assert main(["bootstrap"]) == 0
    token = capsys.readouterr().out.strip().removeprefix("FT_CONSOLE_TOKEN=")
    assert main(["bootstrap"]) == 1  # one first admin only
    settings = ConsoleSettings(data_dir=tmp_path)
    opened = ConsoleState.build(settings).accounts.sign_in(token)
    assert opened is not None and opened[0].operator.is_admin


@pytest.mark.slow
def test_the_playground_streams_two_models_side_by_side_through_the_gateway(
    console: ConsoleState, inference_server: "InferenceServer"
) -> None:
    console.settings.gateway_url = inference_server.http_url
    client, csrf = signed_in(console, "read-only")
    answers = []
    for model in ("smollm2-135m-instruct", "no-such-model"):
        reply = client.post(
            "/api/playground/chat",
            json={"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8},
            headers={"X-CSRF-Token": csrf},
        )
        assert reply.status_code == 200
        answers.append(reply.text)
    assert '"delta"' in answers[0] and "data: [DONE]" in answers[0]
    assert "event: error" in answers[1] and "no-such-model" in answers[1] and "request_id" in answers[1]


def test_an_unknown_page_is_the_consoles_error_page_with_a_request_id(console: ConsoleState) -> None:
    client, _ = signed_in(console, "read-only")
    reply = client.get("/no-such-page")
    assert reply.status_code == 404 and "no such page" in reply.text
    assert re.search(r"request id <code>[0-9a-f-]{8,}</code>", reply.text)
