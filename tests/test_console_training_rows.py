"""The playground's "save as training row" against real data and trainer services: a new version of the
dataset holds its rows plus the exchange, the old one is untouched; a new dataset from one row; admin role,
CSRF and a malformed exchange refused with a message."""

from collections.abc import Iterator

import pytest
from data_fixtures import jsonl, upload
from test_console import signed_in

from finetune.v1 import data_pb2
from ftcommon.grpc_server import RunningServer
from services.console.config import ConsoleSettings
from services.console.state import ConsoleState

EXCHANGE = [
    {"role": "system", "content": "You answer questions about the platform."},
    {"role": "user", "content": "How do I roll back prod?"},
    {"role": "assistant", "content": "Open Models, find prod's history and roll back to a revision."},
]


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory, data_server: RunningServer, trainer_server: RunningServer
) -> Iterator[ConsoleState]:
    settings = ConsoleSettings(
        data_dir=tmp_path_factory.mktemp("console-rows"),
        data_address=data_server.address,
        trainer_address=trainer_server.address,
        eval_address="127.0.0.1:1",
    )
    state = ConsoleState.build(settings)
    yield state
    state.close()


def _rows(data_stub, dataset_id: str) -> list[list[tuple[str, str]]]:
    preview = data_stub.PreviewDataset(data_pb2.PreviewDatasetRequest(id=dataset_id, limit=100))
    return [[(m.role, m.content) for m in row.messages] for row in preview.rows]


def test_saving_an_exchange_makes_a_new_version_with_one_more_row(console: ConsoleState, data_stub) -> None:
    rows = [{"question": f"What does setting {i} do?", "answer": f"It sets {i}."} for i in range(3)]
    original = upload(data_stub, jsonl(rows), "settings.jsonl", name="settings-faq")
    client, csrf = signed_in(console, "admin")
    assert 'id="save-row-template"' in client.get("/playground").text
    reply = client.post(
        "/api/playground/training-rows",
        json={"dataset_id": original.id, "messages": EXCHANGE},
        headers={"X-CSRF-Token": csrf},
    )
    assert reply.status_code == 200, reply.text
    saved = reply.json()
    assert saved["id"] != original.id and saved["name"] == "settings-faq" and saved["rows"] == 4
    assert _rows(data_stub, saved["id"])[:3] == _rows(data_stub, original.id)
    assert _rows(data_stub, saved["id"])[3] == [(m["role"], m["content"]) for m in EXCHANGE]
    assert len(_rows(data_stub, original.id)) == 3  # the old version is untouched

    fresh = client.post(
        "/api/playground/training-rows",
        json={"name": "playground-fixes", "messages": EXCHANGE[1:]},
        headers={"X-CSRF-Token": csrf},
    )
    assert (
        fresh.status_code == 200 and fresh.json()["rows"] == 1 and fresh.json()["name"] == "playground-fixes"
    )


def test_saving_needs_an_exchange_the_admin_role_and_the_csrf_token(console: ConsoleState) -> None:
    body = {"name": "x", "messages": EXCHANGE[1:]}
    reader, reader_csrf = signed_in(console, "read-only")
    assert 'id="save-row-template"' not in reader.get("/playground").text
    refused = reader.post("/api/playground/training-rows", json=body, headers={"X-CSRF-Token": reader_csrf})
    assert refused.status_code == 403 and "read-only" in refused.json()["error"]
    admin, csrf = signed_in(console, "admin")
    assert admin.post("/api/playground/training-rows", json=body).status_code == 403
    backwards = {"name": "x", "messages": list(reversed(EXCHANGE[1:]))}
    bad = admin.post("/api/playground/training-rows", json=backwards, headers={"X-CSRF-Token": csrf})
    assert bad.status_code == 400 and "the answer last" in bad.json()["error"]
    missing = admin.post(
        "/api/playground/training-rows",
        json={"dataset_id": "ds-missing", "messages": EXCHANGE},
        headers={"X-CSRF-Token": csrf},
    )
    assert missing.status_code == 404 and missing.json()["service"] == "data service"
    assert missing.json()["request_id"]
