"""`ftctl keys`: API keys of the chat gateway.

The CLI opens the gateway's own database directly (same FT_INFERENCE_ settings as the server) rather than
calling an admin endpoint: key management is an operator action on the gateway's host, and an admin API would
itself need a credential to bootstrap the very first key.
"""

import typer

from ftcommon.errors import ServiceError
from ftctl.common import JSON_OPTION, console, print_json, print_table
from services.inference.auth import ApiKey, KeyStore
from services.inference.config import InferenceSettings
from services.inference.server import open_key_store

app = typer.Typer(no_args_is_help=True)


def _store() -> KeyStore:
    return open_key_store(InferenceSettings())


def _row(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "rate_limit_per_minute": key.rate_limit_per_minute,
        "created_at": key.created_at.isoformat(timespec="seconds"),
        "revoked_at": key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else None,
    }


@app.command("create")
def create(
    name: str = typer.Option("default", "--name", help="Who or what uses the key."),
    rate_limit: int | None = typer.Option(
        None, "--rate-limit", help="Requests per minute (default: the gateway's)."
    ),
    json_output: bool = JSON_OPTION,
) -> None:
    """Creates a key and prints its secret once: only a hash is stored."""
    try:
        key, secret = _store().create(name, rate_limit)
    except ServiceError as err:
        console.print(f"[red]error[/red] {err.details()}")
        raise typer.Exit(1) from None
    if json_output:
        print_json({**_row(key), "secret": secret})
        return
    console.print(f"created {key.id} ({key.name}); keep the secret, it is not shown again:")
    typer.echo(secret)


@app.command("list")
def list_keys(json_output: bool = JSON_OPTION) -> None:
    """Lists keys (never their secrets)."""
    rows = [_row(key) for key in _store().list()]
    if json_output:
        print_json(rows)
        return
    columns = ["id", "name", "prefix", "rate_limit_per_minute", "created_at", "revoked_at"]
    print_table("API keys", columns, [[row[c] or "" for c in columns] for row in rows])


@app.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="The key's id, from `ftctl keys list`.")) -> None:
    """Revokes a key; requests with it get 401 from then on."""
    try:
        key = _store().revoke(key_id)
    except ServiceError as err:
        console.print(f"[red]error[/red] {err.details()}")
        raise typer.Exit(1) from None
    console.print(f"revoked {key.id} ({key.name})")
