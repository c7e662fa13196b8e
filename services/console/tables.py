"""The console's own tables: operators (tokens hashed at rest) and sessions. Nothing else is stored here;
datasets, jobs and models are read from their services."""

from sqlalchemy import Column, DateTime, ForeignKey, MetaData, String, Table

from ftcommon.db import Migration, create_tables

metadata = MetaData()

operators = Table(
    "console_operators",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(20), nullable=False),  # admin | read-only
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_at", DateTime, nullable=False),
    Column("revoked_at", DateTime, nullable=True),
)

sessions = Table(
    "console_sessions",
    metadata,
    # The cookie's value is never stored, only its hash: a copy of this table opens no session.
    Column("secret_sha256", String(64), primary_key=True),
    Column("operator_id", String(40), ForeignKey("console_operators.id"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False),
)

MIGRATIONS = [
    Migration("console-0001-operators-sessions", create_tables(metadata, operators.name, sessions.name))
]
