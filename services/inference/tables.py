"""The inference service's own tables: API keys and admin tokens (both hashed; a secret is shown once, at
creation), and the OpenAI fine-tuning surface's files and jobs (which project owns them, and the data and
trainer ids behind each)."""

from alembic.operations import Operations
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, inspect

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
    # Space-separated scopes (chat, fine-tune, admin); keys from before scopes existed hold "chat".
    Column("scopes", String(200), nullable=False, server_default="chat"),
    # Keys of one project see the same files and fine-tuning jobs; empty for keys from before projects.
    Column("project", String(200), nullable=False, server_default=""),
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

# POST /v1/files: an uploaded file is a dataset of the data service; this row says whose it is.
openai_files = Table(
    "openai_files",
    metadata,
    Column("id", String(64), primary_key=True),  # file-...
    Column("project", String(200), nullable=False, index=True),
    Column("dataset_id", String(64), nullable=False),
    Column("filename", String(500), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("created_at", DateTime, nullable=False),
    # Files the gateway writes itself (a job's metrics CSV, purpose fine-tune-results) are artifacts, not
    # datasets: dataset_id is empty for them.
    Column("artifact_uri", String(300), nullable=True),
)

# POST /v1/fine_tuning/jobs: the OpenAI job and the prepare and training jobs that do its work.
fine_tuning_jobs = Table(
    "fine_tuning_jobs",
    metadata,
    Column("id", String(64), primary_key=True),  # ftjob-...
    Column("project", String(200), nullable=False, index=True),
    Column("model", String(200), nullable=False),
    Column("training_file", String(64), nullable=False),
    Column("validation_file", String(64), nullable=True),
    Column("suffix", String(64), nullable=True),
    Column("seed", Integer, nullable=False),
    Column("metadata", Text, nullable=True),  # JSON object
    Column("hyperparameters", Text, nullable=False),  # JSON: what the caller asked, "auto" kept
    Column("status", String(32), nullable=False),  # OpenAI's status values
    Column("prepare_job_id", String(64), nullable=True),
    Column("train_job_id", String(64), nullable=True),
    Column("fine_tuned_model", String(300), nullable=True),
    Column("error", Text, nullable=True),  # JSON {code, message, param}
    Column("cancel_requested", Integer, nullable=False, server_default="0"),
    Column("merged_model_id", String(64), nullable=True),  # the registry model fine_tuned_model names
    Column("trained_tokens", Integer, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("finished_at", DateTime, nullable=True),
    Column("estimated_finish", DateTime, nullable=True),  # from the trainer's latest ETA while it trains
    Column("result_files", Text, nullable=True),  # JSON list of file ids
    # OpenAI's method.type; jobs recorded before DPO was accepted were all supervised.
    Column("method", String(32), nullable=False, server_default="supervised"),
)

# A job's events as OpenAI lists them, translated from the prepare and training jobs' event logs; `source`
# and `source_index` say which event each came from, so following them resumes without duplicates.
fine_tuning_events = Table(
    "fine_tuning_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), unique=True, nullable=False),
    Column("job_id", String(64), nullable=False, index=True),
    Column("source", String(16), nullable=False),  # gateway | prepare | train
    Column("source_index", Integer, nullable=False),
    Column("level", String(8), nullable=False),
    Column("type", String(8), nullable=False),  # message | metrics
    Column("message", Text, nullable=False),
    Column("data", Text, nullable=True),  # JSON object
    Column("created_at", DateTime, nullable=False),
)


def _add_key_scopes(op: Operations) -> None:
    # A database created since the columns were declared has them already: 0001 creates from the metadata.
    present = {c["name"] for c in inspect(op.get_bind()).get_columns("api_keys")}
    if "scopes" not in present:
        op.add_column("api_keys", Column("scopes", String(200), nullable=False, server_default="chat"))
    if "project" not in present:
        op.add_column("api_keys", Column("project", String(200), nullable=False, server_default=""))


def _add_results(op: Operations) -> None:
    # A database created since the columns were declared has them already: 0004 creates from the metadata.
    files = {c["name"] for c in inspect(op.get_bind()).get_columns("openai_files")}
    if "artifact_uri" not in files:
        op.add_column("openai_files", Column("artifact_uri", String(300), nullable=True))
    jobs = {c["name"] for c in inspect(op.get_bind()).get_columns("fine_tuning_jobs")}
    if "estimated_finish" not in jobs:
        op.add_column("fine_tuning_jobs", Column("estimated_finish", DateTime, nullable=True))
    if "result_files" not in jobs:
        op.add_column("fine_tuning_jobs", Column("result_files", Text, nullable=True))


def _add_job_method(op: Operations) -> None:
    # A database created since the column was declared has it already: 0004 creates from the metadata.
    if "method" not in {c["name"] for c in inspect(op.get_bind()).get_columns("fine_tuning_jobs")}:
        op.add_column(
            "fine_tuning_jobs", Column("method", String(32), nullable=False, server_default="supervised")
        )


MIGRATIONS = [
    Migration("0001_api_keys", create_tables(metadata, "api_keys")),
    Migration("0002_admin_tokens", create_tables(metadata, "admin_tokens")),
    Migration("0003_key_scopes_and_projects", _add_key_scopes),
    Migration(
        "0004_openai_fine_tuning",
        create_tables(metadata, "openai_files", "fine_tuning_jobs", "fine_tuning_events"),
    ),
    Migration("0005_fine_tuning_results", _add_results),
    Migration("0006_fine_tuning_method", _add_job_method),
]
