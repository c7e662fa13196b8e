"""What the server, the workers and the job processes agree on about a training job, without torch."""

from pathlib import Path

from ftcommon.db import Database
from ftcommon.jobs import JobStore
from services.trainer import tables
from services.trainer.config import TrainerSettings

JOB_KIND = "train"
RESULT_FILE = "result.json"  # the job process's outputs, read by the worker that ran it
EXIT_STOPPED = 3  # the job process stopped because the job was cancelled or is no longer its worker's


def job_store(db: Database) -> JobStore:
    return JobStore(db, tables.jobs, tables.job_events, JOB_KIND)


def job_work_dir(settings: TrainerSettings, job_id: str) -> Path:
    """Scratch space on the worker's machine; anything that must outlive it goes to the artifact store."""
    return settings.data_dir.resolve() / "work" / job_id
