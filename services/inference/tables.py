"""The inference service's own tables: API keys and admin tokens (both hashed; a secret is shown once, at
creation)."""

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table

from ftcommon.db import Migration, create_tables

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(16), nullable=False),  # enough to recognise a key in a listing
    Column("key_sha256", String(64), unique=True, nullable=False),
    Column("rate_limit_per_minute", Integer, nullable=True),  # empty: the gateway's default
    Column("created_at", DateTime, nullable=False),
    Column("revoked_at", DateTime, nullable=True),
)

# Who may manage API keys over HTTP (/admin/...); the first one comes from `python -m services.inference.keys
# bootstrap` on the gateway's host.
admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("token_sha256", String(64), unique=True, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("revoked_at", DateTime, nullable=True),
)

MIGRATIONS = [
    Migration("0001_api_keys", create_tables(metadata, "api_keys")),
    Migration("0002_admin_tokens", create_tables(metadata, "admin_tokens")),
]
