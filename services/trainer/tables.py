"""The trainer's own tables: jobs, checkpoints, the model registry and aliases."""

from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table, Text

from ftcommon.db import Migration, create_tables
from ftcommon.jobs import job_tables

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

MIGRATIONS = [
    Migration(
        "0001_initial",
        create_tables(metadata, "train_jobs", "train_job_events", "models", "aliases", "checkpoints"),
    ),
]
