"""`ftctl keys`: API keys of the chat gateway, managed through its /admin endpoints with an admin token.

The CLI never opens the gateway's database, so it works from any directory and host. The operator creates
the first admin token on the gateway's host with `python -m services.inference.keys bootstrap`.
"""

import subprocess
import sys
from typing import Any
from urllib.parse import quote

import typer
from rich.markup import escape

from ftctl.common import JSON_OPTION, addresses, console, gateway_unreachable, print_json, print_table

app = typer.Typer(no_args_is_help=True)

ADMIN_TOKEN_OPTION = typer.Option(
    "",
    "--admin-token",
    envvar="FT_ADMIN_TOKEN",
    show_default=False,
    help="An admin token of the gateway (`python -m services.inference.keys bootstrap` on its host).",
)
COLUMNS = ["id", "name", "prefix", "scopes", "project", "rate_limit_per_minute", "created_at", "revoked_at"]


def call_admin_api(
    gateway_url: str, method: str, path: str, admin_token: str, body: dict[str, Any] | None = None
) -> Any:
    """One request to the gateway's /admin API; a failure becomes one readable line and exit status 1."""
    import httpx  # here, not at the top: `ftctl --help` and the gRPC commands never need it

    url = f"{gateway_url.rstrip('/')}/admin{path}"
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    try:
        response = httpx.request(
            method, url, json=body, headers=headers, timeout=addresses().rpc_timeout_seconds
        )
    except httpx.TransportError:
        console.print(f"[red]error[/red] {gateway_unreachable(gateway_url)}")
        raise typer.Exit(1) from None
    if response.is_error:
        console.print(f"[red]error[/red] {response.status_code}: {escape(_error_message(response))}")
        raise typer.Exit(1)
    return response.json()


def create_api_key(
    gateway_url: str,
    admin_token: str,
    name: str,
    rate_limit_per_minute: int | None = None,
    scopes: list[str] | None = None,
    project: str = "",
) -> dict[str, Any]:
    """A new key as the gateway returns it, with its `secret`."""
    body: dict[str, Any] = {"name": name, "rate_limit_per_minute": rate_limit_per_minute, "project": project}
    if scopes:
        body["scopes"] = scopes
    return call_admin_api(gateway_url, "POST", "/keys", admin_token, body)


def bootstrap_admin_token(gateway_environment: dict[str, str], name: str = "local stack") -> str:
    """Runs the gateway-host bootstrap command with the gateway's environment (a local stack: the demo)
    and returns the admin token it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "services.inference.keys", "bootstrap", "--name", name],
        env=gateway_environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"admin token bootstrap failed: {result.stderr.strip()}")
    return result.stdout.strip().removeprefix("export FT_ADMIN_TOKEN=")


def _error_message(response: Any) -> str:
    """The gateway's message (OpenAI's error shape), or the raw body from anything else at that address."""
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:500]


@app.command("create")
def create(
    name: str = typer.Option("default", "--name", help="Who or what uses the key."),
    rate_limit: int | None = typer.Option(
        None, "--rate-limit", help="Requests per minute (default: the gateway's)."
    ),
    scope: list[str] = typer.Option(
        [], "--scope", help="chat, fine-tune or admin; repeat for several (default: chat)."
    ),
    project: str = typer.Option(
        "",
        "--project",
        help="Keys of one project see the same files and fine-tuning jobs (default: the name).",
    ),
    admin_token: str = ADMIN_TOKEN_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Creates a key and prints its secret once, as an `export FT_API_KEY=...` line: only a hash is stored."""
    key = create_api_key(addresses().gateway_url, admin_token, name, rate_limit, scope, project)
    if json_output:
        print_json(key)
        return
    console.print(
        f"created {escape(key['id'])} ({escape(key['name'])}); its secret is not shown again. "
        "`ftctl chat` and OpenAI clients read it from FT_API_KEY:"
    )
    typer.echo(f"export FT_API_KEY={key['secret']}")


@app.command("list")
def list_keys(admin_token: str = ADMIN_TOKEN_OPTION, json_output: bool = JSON_OPTION) -> None:
    """Lists keys (never their secrets)."""
    rows = call_admin_api(addresses().gateway_url, "GET", "/keys", admin_token)["data"]
    if json_output:
        print_json(rows)
        return
    print_table("API keys", COLUMNS, [[_cell(row.get(c)) for c in COLUMNS] for row in rows])


def _cell(value: Any) -> Any:
    return " ".join(value) if isinstance(value, list) else value or ""


@app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id, from `ftctl keys list`."),
    admin_token: str = ADMIN_TOKEN_OPTION,
) -> None:
    """Revokes a key; requests with it get 401 from then on."""
    key = call_admin_api(
        addresses().gateway_url, "POST", f"/keys/{quote(key_id, safe='')}/revoke", admin_token
    )
    console.print(f"revoked {escape(key['id'])} ({escape(key['name'])})")
