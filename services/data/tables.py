"""The data service's own tables: datasets, prepared versions and prepare jobs."""

from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table, Text

from ftcommon.db import Migration, create_tables
from ftcommon.jobs import job_tables

metadata = MetaData()

prepare_jobs, prepare_job_events = job_tables(metadata, "prepare")

datasets = Table(
    "datasets",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False, index=True),
    Column("format", Integer, nullable=False),
    Column("schema", Integer, nullable=False),
    Column("source", Text, nullable=False),
    Column("raw_uri", String(300), nullable=False),
    Column("raw_sha256", String(64), nullable=False),
    Column("raw_size", BigInteger, nullable=False),
    Column("normalized_uri", String(300), nullable=False),
    Column("normalized_sha256", String(64), nullable=False),
    Column("normalized_size", BigInteger, nullable=False),
    Column("report_uri", String(300), nullable=False),
    Column("counts", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

prepared_versions = Table(
    "prepared_versions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("dataset_id", String(64), nullable=False, index=True),
    Column("base_model_id", String(64), nullable=False),
    Column("request", Text, nullable=False),
    Column("artifact_uri", String(300), nullable=False),
    Column("artifact_sha256", String(64), nullable=False),
    Column("artifact_size", BigInteger, nullable=False),
    Column("split_stats", Text, nullable=False),
    Column("dropped_too_long", Integer, nullable=False),
    Column("truncated", Integer, nullable=False),
    Column("refusal_rows", Integer, nullable=False),
    Column("tokenizer_sha256", String(64), nullable=False),
    Column("chat_template_sha256", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False),
)

MIGRATIONS = [
    Migration(
        "0001_initial",
        create_tables(metadata, "prepare_jobs", "prepare_job_events", "datasets", "prepared_versions"),
    ),
]
