"""The data service's own tables: datasets, prepared versions and prepare jobs."""

from alembic.operations import Operations
from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table, Text, inspect

from ftcommon.db import Migration, create_tables
from ftcommon.jobs import add_pause_requested, job_tables

metadata = MetaData()

prepare_jobs, prepare_job_events = job_tables(metadata, "prepare")
# Documents to Q&A (GenerateDataset): jobs of their own, so each kind keeps its own payload and ids.
generate_jobs, generate_job_events = job_tables(metadata, "generate")

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
    Column("split_pii", Text, nullable=True),  # JSON; NULL for versions made before PII was counted
    Column("warnings", Text, nullable=True),  # JSON list; NULL for versions made before prepare advised
    # 1: every row is a preference pair; NULL for versions made before pairs existed (none held pairs).
    Column("preference_pairs", Integer, nullable=True),
)


def _add_split_pii(op: Operations) -> None:
    # A database created since the column was declared has it already: 0001 creates tables from the metadata.
    if "split_pii" not in {c["name"] for c in inspect(op.get_bind()).get_columns("prepared_versions")}:
        op.add_column("prepared_versions", Column("split_pii", Text, nullable=True))


def _add_warnings(op: Operations) -> None:
    if "warnings" not in {c["name"] for c in inspect(op.get_bind()).get_columns("prepared_versions")}:
        op.add_column("prepared_versions", Column("warnings", Text, nullable=True))


def _add_preference_pairs(op: Operations) -> None:
    if "preference_pairs" not in {c["name"] for c in inspect(op.get_bind()).get_columns("prepared_versions")}:
        op.add_column("prepared_versions", Column("preference_pairs", Integer, nullable=True))


MIGRATIONS = [
    Migration(
        "0001_initial",
        create_tables(metadata, "prepare_jobs", "prepare_job_events", "datasets", "prepared_versions"),
    ),
    Migration("0002_prepared_version_split_pii", _add_split_pii),
    Migration("0003_prepared_version_warnings", _add_warnings),
    Migration("0004_prepare_jobs_pause_requested", add_pause_requested("prepare_jobs")),
    Migration("0005_prepared_version_preference_pairs", _add_preference_pairs),
    Migration("0006_generate_jobs", create_tables(metadata, "generate_jobs", "generate_job_events")),
]
