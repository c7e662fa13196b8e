"""Operators and sessions in the console's own database, and the command that makes the first operator.

`python -m services.console.accounts bootstrap` creates an admin operator token and prints it once; only its
sha256 is stored. `create --role read-only` adds more. Signing in with a token opens a session: a random
cookie (stored hashed) with its own CSRF token, both checked on every request.
"""

import argparse
import hmac
import secrets
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import select

from ftcommon.db import Database, utcnow
from ftcommon.ids import new_id, sha256_bytes
from services.console import tables
from services.console.config import ConsoleSettings

SERVICE = "console"
TOKEN_PREFIX = "ftc_"
Role = Literal["admin", "read-only"]
ROLES: tuple[Role, ...] = ("admin", "read-only")


@dataclass(frozen=True)
class Operator:
    id: str
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Session:
    operator: Operator
    csrf_token: str
    expires_at: datetime


def _digest(secret: str) -> str:
    return sha256_bytes(secret.encode())


def open_console_database(settings: ConsoleSettings) -> Database:
    database = Database(settings.resolved_database_url(SERVICE), tables.metadata, tables.MIGRATIONS)
    database.migrate()
    return database


class Accounts:
    def __init__(self, database: Database, session_lifetime: timedelta) -> None:
        self.database = database
        self.session_lifetime = session_lifetime

    def create_operator(self, name: str, role: Role) -> tuple[Operator, str]:
        """A new operator and its token, which is returned once and stored only as a hash."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        operator = Operator(id=new_id("op"), name=name, role=role)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.database.begin() as conn:
            conn.execute(
                tables.operators.insert().values(
                    id=operator.id, name=name, role=role, token_sha256=_digest(token), created_at=utcnow()
                )
            )
        return operator, token

    def active_operators(self) -> list[Operator]:
        table = tables.operators
        with self.database.begin() as conn:
            rows = conn.execute(select(table).where(table.c.revoked_at.is_(None))).all()
        return [Operator(row.id, row.name, row.role) for row in rows]

    def sign_in(self, token: str) -> tuple[Session, str] | None:
        """A new session for the operator holding `token` and the cookie value that opens it; None when
        the token is unknown or revoked."""
        table = tables.operators
        with self.database.begin() as conn:
            row = conn.execute(
                select(table).where(
                    table.c.token_sha256 == _digest(token.strip()), table.c.revoked_at.is_(None)
                )
            ).first()
            if row is None:
                return None
            cookie = secrets.token_urlsafe(32)
            session = Session(
                operator=Operator(row.id, row.name, row.role),
                csrf_token=secrets.token_urlsafe(32),
                expires_at=utcnow() + self.session_lifetime,
            )
            conn.execute(
                tables.sessions.insert().values(
                    secret_sha256=_digest(cookie),
                    operator_id=row.id,
                    csrf_token=session.csrf_token,
                    created_at=utcnow(),
                    expires_at=session.expires_at,
                )
            )
        return session, cookie

    def session(self, cookie: str) -> Session | None:
        """The live session the cookie opens; expired sessions and revoked operators open nothing."""
        sessions, operators = tables.sessions, tables.operators
        with self.database.begin() as conn:
            row = conn.execute(
                select(sessions, operators.c.name, operators.c.role)
                .join(operators, operators.c.id == sessions.c.operator_id)
                .where(
                    sessions.c.secret_sha256 == _digest(cookie),
                    sessions.c.expires_at > utcnow(),
                    operators.c.revoked_at.is_(None),
                )
            ).first()
        if row is None:
            return None
        return Session(Operator(row.operator_id, row.name, row.role), row.csrf_token, row.expires_at)

    def sign_out(self, cookie: str) -> None:
        with self.database.begin() as conn:
            conn.execute(tables.sessions.delete().where(tables.sessions.c.secret_sha256 == _digest(cookie)))


def csrf_matches(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.console.accounts", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    bootstrap = commands.add_parser("bootstrap", help="Create the first admin operator and print its token.")
    bootstrap.add_argument("--name", default="operator", help="Who holds the token.")
    create = commands.add_parser("create", help="Create another operator and print its token.")
    create.add_argument("--name", required=True)
    create.add_argument("--role", choices=ROLES, default="read-only")
    arguments = parser.parse_args(argv)

    settings = ConsoleSettings()
    accounts = Accounts(open_console_database(settings), timedelta(hours=settings.session_hours))
    if arguments.command == "bootstrap":
        existing = [operator for operator in accounts.active_operators() if operator.is_admin]
        if existing:
            names = ", ".join(f"{operator.id} ({operator.name})" for operator in existing)
            print(f"error: the console already has an admin operator: {names}; use `create`", file=sys.stderr)
            return 1
        operator, token = accounts.create_operator(arguments.name, "admin")
    else:
        operator, token = accounts.create_operator(arguments.name, arguments.role)
    where = settings.default_sqlite_path(SERVICE) or "FT_CONSOLE_DATABASE_URL"
    print(
        f"{operator.role} operator {operator.id} ({operator.name}) stored (hashed) in {where}; the token is "
        "not shown again. Sign in to the console with:",
        file=sys.stderr,
    )
    print(f"FT_CONSOLE_TOKEN={token}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
