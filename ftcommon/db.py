"""SQLAlchemy engine and migrations: a SQLite file by default, PostgreSQL by URL.

Each service owns its own metadata and migration list; nothing here knows any service's tables.
Migrations use alembic's operations API without its file layout: a service declares an ordered
list of (revision, upgrade) pairs, and `migrate` applies those not yet recorded.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, ProgrammingError


@dataclass(frozen=True)
class Migration:
    revision: str
    upgrade: Callable[[Operations], None]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    # WAL lets readers (watch streams) run beside the single writer; busy_timeout makes writers wait.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Database:
    def __init__(self, url: str, metadata: MetaData, migrations: Sequence[Migration]) -> None:
        self.url = url
        self.metadata = metadata
        self.migrations = list(migrations)
        self.is_sqlite = url.startswith("sqlite")
        connect_args = {"timeout": 30, "check_same_thread": False} if self.is_sqlite else {}
        self.engine: Engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._versions = Table(
            "schema_migrations",
            MetaData(),
            Column("revision", String(64), primary_key=True),
            Column("applied_at", DateTime, nullable=False),
        )

    def migrate(self) -> list[str]:
        """Applies pending migrations in order; safe to call from several processes at once."""
        applied: list[str] = []
        self._ensure_versions_table()
        for migration in self.migrations:
            try:
                with self.engine.begin() as conn:
                    done = conn.execute(
                        select(self._versions.c.revision).where(
                            self._versions.c.revision == migration.revision
                        )
                    ).first()
                    if done:
                        continue
                    conn.execute(
                        self._versions.insert().values(revision=migration.revision, applied_at=utcnow())
                    )
                    migration.upgrade(Operations(MigrationContext.configure(conn)))
                    applied.append(migration.revision)
            except IntegrityError:
                # Another process recorded (and so applied) this revision first.
                continue
        return applied

    def _ensure_versions_table(self) -> None:
        try:
            self._versions.create(self.engine, checkfirst=True)
        except (IntegrityError, ProgrammingError):
            # PostgreSQL: a process migrating beside this one created it between the check and the CREATE.
            if not inspect(self.engine).has_table(self._versions.name):
                raise

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def create_tables(metadata: MetaData, *tables: str) -> Callable[[Operations], None]:
    """An upgrade step that creates the named tables as the metadata declares them."""

    def upgrade(op: Operations) -> None:
        bind = op.get_bind()
        metadata.create_all(bind, tables=[metadata.tables[name] for name in tables], checkfirst=True)

    return upgrade
