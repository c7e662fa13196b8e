"""API keys through the gateway: the admin token bootstrapped on the gateway's host, `ftctl keys` over HTTP
from any directory, 401s that name the fix, and no database created where the gateway does not look."""

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftctl.main import app
from services.inference.auth import AdminTokenStore
from services.inference.config import InferenceSettings
from services.inference.keys import SERVICE, bootstrap, main, open_gateway_database


def run_bootstrap(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    status = main(["bootstrap", *arguments])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_bootstrap_refuses_a_database_the_gateway_never_created(tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "not-the-gateways-data-dir"
    monkeypatch.setenv("FT_INFERENCE_DATA_DIR", str(elsewhere))
    status, out, err = run_bootstrap(capsys)
    assert status == 1 and not out
    assert str(elsewhere / "inference.db") in err and "FT_INFERENCE_DATA_DIR" in err
    assert not elsewhere.exists()


def test_bootstrap_prints_a_hashed_token_once_and_replaces_it_only_when_asked(tmp_path, monkeypatch, capsys):
    settings = InferenceSettings(data_dir=tmp_path)
    open_gateway_database(settings)  # what the gateway does when it starts
    monkeypatch.setenv("FT_INFERENCE_DATA_DIR", str(tmp_path))

    status, out, err = run_bootstrap(capsys, "--name", "ops")
    assert status == 0, err
    assert out.startswith("export FT_ADMIN_TOKEN=fta-") and out.count("\n") == 1
    first = out.strip().removeprefix("export FT_ADMIN_TOKEN=")
    assert first not in err
    # Hashed at rest: the secret is nowhere in the database.
    with sqlite3.connect(settings.default_sqlite_path(SERVICE)) as connection:
        stored = connection.execute("select * from admin_tokens").fetchall()
    assert len(stored) == 1 and first not in repr(stored)

    status, out, err = run_bootstrap(capsys)
    assert status == 1 and not out
    assert "already has an admin token" in err and "--replace" in err

    status, out, _ = run_bootstrap(capsys, "--replace")
    second = out.strip().removeprefix("export FT_ADMIN_TOKEN=")
    store = AdminTokenStore(open_gateway_database(settings))
    assert status == 0 and store.authenticate(first) is None
    assert store.authenticate(second) is not None


@pytest.fixture
def admin_token(inference_server, data_root) -> str:
    """A fresh admin token for the session's gateway, made the way its operator would."""
    return bootstrap(InferenceSettings(data_dir=data_root), "tests", replace=True)[1]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch, inference_server) -> Path:
    """A working directory that is not the gateway's, with ftctl pointed at the session's gateway."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FT_GATEWAY_URL", inference_server.http_url)
    monkeypatch.delenv("FT_ADMIN_TOKEN", raising=False)
    return tmp_path


def test_ftctl_keys_create_list_revoke_through_the_gateway(inference_server, admin_token, elsewhere):
    runner = CliRunner()
    keys = inference_server.state.keys
    created = runner.invoke(
        app, ["keys", "create", "--name", "ci", "--rate-limit", "5"], env={"FT_ADMIN_TOKEN": admin_token}
    )
    assert created.exit_code == 0, created.output
    assert created.stdout.startswith("export FT_API_KEY=ft-") and created.stdout.count("\n") == 1
    secret = created.stdout.strip().removeprefix("export FT_API_KEY=")
    key = keys.authenticate(secret)
    assert key is not None and key.rate_limit_per_minute == 5

    listed = runner.invoke(app, ["keys", "list", "--json", "--admin-token", admin_token])
    assert listed.exit_code == 0, listed.output
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows[key.id]["name"] == "ci" and secret not in listed.stdout

    revoked = runner.invoke(app, ["keys", "revoke", key.id, "--admin-token", admin_token])
    assert revoked.exit_code == 0, revoked.output
    assert keys.authenticate(secret) is None
    missing = runner.invoke(app, ["keys", "revoke", "key-missing", "--admin-token", admin_token])
    assert missing.exit_code == 1 and "404" in missing.stderr and "key-missing" in missing.stderr
    # Run from another directory, the CLI created no database of its own.
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("credential", ["", "fta-not-a-token", "api-key"])
def test_keys_create_without_an_admin_token_gets_401_naming_the_fix(
    inference_server, admin_token, elsewhere, credential
):
    if credential == "api-key":  # a chat key is no admin token
        credential = inference_server.state.keys.create("chat only")[1]
    before = len(inference_server.state.keys.list())
    result = CliRunner().invoke(app, ["keys", "create"], env={"FT_ADMIN_TOKEN": credential})
    assert result.exit_code == 1 and not result.stdout
    error = " ".join(result.stderr.split())
    assert error.startswith("error 401: Incorrect or missing admin token")
    assert "FT_ADMIN_TOKEN" in error and "python -m services.inference.keys bootstrap" in error
    assert len(inference_server.state.keys.list()) == before


def test_keys_against_an_unreachable_gateway_names_its_address_and_variable(elsewhere, monkeypatch):
    monkeypatch.setenv("FT_GATEWAY_URL", "http://127.0.0.1:1")
    result = CliRunner().invoke(app, ["keys", "list"], env={"FT_ADMIN_TOKEN": "fta-anything"})
    assert result.exit_code == 1
    error = " ".join(result.stderr.split())
    assert "gateway at http://127.0.0.1:1" in error and "FT_GATEWAY_URL" in error
