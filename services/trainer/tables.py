"""The trainer's own tables: jobs, checkpoints, the model registry and aliases."""

from alembic.operations import Operations
from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table, Text, select

from ftcommon.db import Migration, create_tables
from ftcommon.jobs import add_pause_requested, job_tables

metadata = MetaData()

jobs, job_events = job_tables(metadata, "train")

models = Table(
    "models",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), unique=True, nullable=False),
    Column("kind", Integer, nullable=False),
    Column("artifact_uri", String(300), nullable=False),
    Column("artifact_sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("lineage", Text, nullable=False),
    Column("metrics", Text, nullable=False),
    Column("chat_template", Text, nullable=False),
    Column("eos_token", String(100), nullable=False),
    Column("max_context", Integer, nullable=False),
    Column("parameters", BigInteger, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

aliases = Table(
    "aliases",
    metadata,
    Column("alias", String(100), primary_key=True),
    Column("model_id", String(64), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

# Every move of an alias, with who moved it, why and on what evidence; Rollback returns to one of these.
alias_revisions = Table(
    "alias_revisions",
    metadata,
    Column("alias", String(100), primary_key=True),
    Column("revision", Integer, primary_key=True, autoincrement=False),
    Column("model_id", String(64), nullable=False),
    Column("previous_model_id", String(64), nullable=False),
    Column("action", Integer, nullable=False),  # finetune.v1.AliasAction
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("evidence", Text, nullable=False),  # JSON: what the gate read from the evaluation run
    Column("gate_refusal", Text, nullable=False),
    Column("rolled_back_to", Integer, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("job_id", String(64), nullable=False, index=True),
    Column("step", Integer, nullable=False),
    Column("artifact_uri", String(300), nullable=False),
    Column("artifact_sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

IMPORTED_ALIAS = 4  # finetune.v1.ALIAS_ACTION_IMPORTED


def _create_alias_history(op: Operations) -> None:
    """Aliases set before the history was kept become its first revisions, so they can be rolled back to."""
    create_tables(metadata, "alias_revisions")(op)
    bind = op.get_bind()
    for row in bind.execute(select(aliases)).mappings().all():
        bind.execute(
            alias_revisions.insert().values(
                alias=row["alias"],
                revision=row["revision"],
                model_id=row["model_id"],
                previous_model_id="",
                action=IMPORTED_ALIAS,
                actor="",
                reason="set before the alias history was kept",
                evidence="{}",
                gate_refusal="",
                rolled_back_to=0,
                created_at=row["updated_at"],
            )
        )


MIGRATIONS = [
    Migration(
        "0001_initial",
        create_tables(metadata, "train_jobs", "train_job_events", "models", "aliases", "checkpoints"),
    ),
    Migration("0002_alias_history", _create_alias_history),
    Migration("0003_train_jobs_pause_requested", add_pause_requested("train_jobs")),
]
