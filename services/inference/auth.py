"""API keys and admin tokens (Bearer tokens stored as sha256 hashes) and a per-key token-bucket rate limit."""

import math
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from ftcommon.db import Database, utcnow
from ftcommon.errors import InvalidArgument, NotFound
from ftcommon.ids import new_id, sha256_bytes
from services.inference import tables

KEY_PREFIX = "ft-"
ADMIN_TOKEN_PREFIX = "fta-"
# What an API key may do: chat (/v1/chat/completions, /v1/completions, /v1/models), fine-tune (/v1/files,
# /v1/fine_tuning), admin (everything the other two allow).
SCOPES = ("chat", "fine-tune", "admin")
DEFAULT_SCOPES = ("chat",)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    rate_limit_per_minute: int | None
    created_at: datetime
    revoked_at: datetime | None
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    # Keys of one project see the same files and fine-tuning jobs (as keys of one OpenAI project do).
    project: str = ""

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


@dataclass(frozen=True)
class AdminToken:
    id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def _hash(secret: str) -> str:
    # Keys are 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return sha256_bytes(secret.encode())


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        name: str,
        rate_limit_per_minute: int | None = None,
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
        project: str = "",
    ) -> tuple[ApiKey, str]:
        """Returns the key and its secret; only the hash is stored, so the secret cannot be shown again.
        The project defaults to the key's name."""
        if not name or len(name) > 200:
            raise InvalidArgument("use 1-200 characters", field="name")
        if rate_limit_per_minute is not None and rate_limit_per_minute < 1:
            raise InvalidArgument("must be at least 1", field="rate_limit_per_minute")
        unknown = [scope for scope in scopes if scope not in SCOPES]
        if unknown or not scopes:
            raise InvalidArgument(
                f"unknown scope {', '.join(map(repr, unknown))}; use some of {', '.join(SCOPES)}"
                if unknown
                else f"give at least one of {', '.join(SCOPES)}",
                field="scopes",
            )
        if len(project) > 200:
            raise InvalidArgument("use at most 200 characters", field="project")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = new_id("key")
        with self.db.begin() as conn:
            conn.execute(
                tables.api_keys.insert().values(
                    id=key_id,
                    name=name,
                    prefix=secret[:10],
                    key_sha256=_hash(secret),
                    rate_limit_per_minute=rate_limit_per_minute,
                    created_at=utcnow(),
                    scopes=" ".join(dict.fromkeys(scopes)),
                    project=project or name,
                )
            )
        return self.get(key_id), secret

    def get(self, key_id: str) -> ApiKey:
        with self.db.begin() as conn:
            row = (
                conn.execute(select(tables.api_keys).where(tables.api_keys.c.id == key_id)).mappings().first()
            )
        if row is None:
            raise NotFound(f"no API key '{key_id}'", field="id")
        return _record(row)

    def list(self) -> list[ApiKey]:
        with self.db.begin() as conn:
            rows = conn.execute(select(tables.api_keys).order_by(tables.api_keys.c.created_at)).mappings()
            return [_record(row) for row in rows]

    def revoke(self, key_id: str) -> ApiKey:
        with self.db.begin() as conn:
            conn.execute(
                update(tables.api_keys)
                .where(tables.api_keys.c.id == key_id, tables.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return self.get(key_id)

    def authenticate(self, secret: str) -> ApiKey | None:
        """The active key with this secret, or None (unknown and revoked keys look the same)."""
        with self.db.begin() as conn:
            row = (
                conn.execute(
                    select(tables.api_keys).where(
                        tables.api_keys.c.key_sha256 == _hash(secret), tables.api_keys.c.revoked_at.is_(None)
                    )
                )
                .mappings()
                .first()
            )
        return _record(row) if row else None


class AdminTokenStore:
    """Tokens that may manage API keys through the gateway's /admin endpoints; set by the operator."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str) -> tuple[AdminToken, str]:
        """Returns the token and its secret; only the hash is stored, so the secret cannot be shown again."""
        if not name or len(name) > 200:
            raise InvalidArgument("use 1-200 characters", field="name")
        secret = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = new_id("adm")
        with self.db.begin() as conn:
            conn.execute(
                tables.admin_tokens.insert().values(
                    id=token_id,
                    name=name,
                    prefix=secret[:11],
                    token_sha256=_hash(secret),
                    created_at=utcnow(),
                )
            )
        return next(t for t in self.active() if t.id == token_id), secret

    def active(self) -> list[AdminToken]:
        with self.db.begin() as conn:
            rows = conn.execute(
                select(tables.admin_tokens)
                .where(tables.admin_tokens.c.revoked_at.is_(None))
                .order_by(tables.admin_tokens.c.created_at)
            ).mappings()
            return [_admin_record(row) for row in rows]

    def revoke_all(self) -> int:
        """Revokes every active token (a lost or leaked one is replaced this way); returns how many."""
        with self.db.begin() as conn:
            result = conn.execute(
                update(tables.admin_tokens)
                .where(tables.admin_tokens.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return result.rowcount

    def authenticate(self, secret: str) -> AdminToken | None:
        with self.db.begin() as conn:
            row = (
                conn.execute(
                    select(tables.admin_tokens).where(
                        tables.admin_tokens.c.token_sha256 == _hash(secret),
                        tables.admin_tokens.c.revoked_at.is_(None),
                    )
                )
                .mappings()
                .first()
            )
        return _admin_record(row) if row else None


def _admin_record(row: object) -> AdminToken:
    return AdminToken(
        id=row["id"],  # type: ignore[index]
        name=row["name"],  # type: ignore[index]
        prefix=row["prefix"],  # type: ignore[index]
        created_at=row["created_at"],  # type: ignore[index]
        revoked_at=row["revoked_at"],  # type: ignore[index]
    )


def _record(row: object) -> ApiKey:
    return ApiKey(
        id=row["id"],  # type: ignore[index]
        name=row["name"],  # type: ignore[index]
        prefix=row["prefix"],  # type: ignore[index]
        rate_limit_per_minute=row["rate_limit_per_minute"],  # type: ignore[index]
        created_at=row["created_at"],  # type: ignore[index]
        revoked_at=row["revoked_at"],  # type: ignore[index]
        scopes=tuple(row["scopes"].split()),  # type: ignore[index]
        project=row["project"],  # type: ignore[index]
    )


class RateLimiter:
    """A token bucket per key: `per_minute` requests in a burst, refilled evenly over the minute.
    Used from the event loop only, so it needs no lock."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill time)

    def retry_after(self, key_id: str, per_minute: int) -> int:
        """0 when the request may go ahead (and takes a token), else the seconds to wait."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key_id, (float(per_minute), now))
        refill_per_second = per_minute / 60.0
        tokens = min(float(per_minute), tokens + (now - last) * refill_per_second)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0
        self._buckets[key_id] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / refill_per_second))
