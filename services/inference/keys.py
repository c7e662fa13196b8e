"""The gateway's database of API keys and admin tokens, and the one command that needs its host.

`python -m services.inference.keys bootstrap` creates the first admin token and prints it once; with it,
`ftctl keys create|list|revoke` manage API keys through the gateway's /admin endpoints from anywhere.
It uses the gateway's own settings (FT_INFERENCE_DATA_DIR or FT_INFERENCE_DATABASE_URL) and refuses a
database that does not exist yet: a token stored where the gateway does not look would be rejected.
"""

import argparse
import sys

from ftcommon.db import Database
from services.inference import tables
from services.inference.auth import AdminToken, AdminTokenStore
from services.inference.config import InferenceSettings

SERVICE = "inference"


class BootstrapRefused(Exception):
    pass


def open_gateway_database(settings: InferenceSettings) -> Database:
    """Opens (and creates or migrates) the gateway's database: the gateway's own start-up path."""
    database = Database(settings.resolved_database_url(SERVICE), tables.metadata, tables.MIGRATIONS)
    database.migrate()
    return database


def open_existing_gateway_database(settings: InferenceSettings) -> Database:
    sqlite_path = settings.default_sqlite_path(SERVICE)
    if sqlite_path is not None and not sqlite_path.exists():
        raise BootstrapRefused(
            f"no gateway database at {sqlite_path}: start the gateway first (`ftctl stack up` or "
            "`python -m services.inference.server`), or point FT_INFERENCE_DATA_DIR / FT_INFERENCE_DATABASE_URL "
            "at the one it uses"
        )
    return open_gateway_database(settings)


def bootstrap(settings: InferenceSettings, name: str, replace: bool) -> tuple[AdminToken, str]:
    """A new admin token; refused while another is active unless `replace` (a lost or leaked token)."""
    store = AdminTokenStore(open_existing_gateway_database(settings))
    active = store.active()
    if active and not replace:
        listed = ", ".join(f"{token.id} ({token.name})" for token in active)
        raise BootstrapRefused(
            f"the gateway already has an admin token: {listed}; `bootstrap --replace` revokes it and "
            "prints a new one"
        )
    if replace:
        store.revoke_all()
    return store.create(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.inference.keys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("bootstrap", help="Create the first admin token and print it once.")
    command.add_argument("--name", default="operator", help="Who holds the token.")
    command.add_argument("--replace", action="store_true", help="Revoke the active admin tokens first.")
    arguments = parser.parse_args(argv)

    settings = InferenceSettings()
    try:
        token, secret = bootstrap(settings, arguments.name, arguments.replace)
    except BootstrapRefused as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    where = settings.default_sqlite_path(SERVICE) or "FT_INFERENCE_DATABASE_URL"
    print(
        f"admin token {token.id} ({token.name}) stored (hashed) in {where}; it is not shown again. "
        "Export it where you run `ftctl keys`:",
        file=sys.stderr,
    )
    print(f"export FT_ADMIN_TOKEN={secret}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
