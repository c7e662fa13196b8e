"""The eval service's own tables: runs are jobs (ftcommon.jobs); the report lives in the artifact store."""

from sqlalchemy import MetaData

from ftcommon.db import Migration, create_tables
from ftcommon.jobs import add_pause_requested, job_tables

metadata = MetaData()

jobs, job_events = job_tables(metadata, "eval")

MIGRATIONS = [
    Migration("0001_initial", create_tables(metadata, "eval_jobs", "eval_job_events")),
    Migration("0002_eval_jobs_pause_requested", add_pause_requested("eval_jobs")),
]
