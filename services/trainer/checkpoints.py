"""The checkpoints table: which artifact holds a job's state at which step."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from ftcommon.artifacts import Artifact
from ftcommon.db import Database, utcnow
from ftcommon.ids import new_id
from services.trainer import tables


@dataclass(frozen=True)
class CheckpointRecord:
    id: str
    job_id: str
    step: int
    artifact: Artifact
    created_at: datetime


def record_checkpoint(db: Database, job_id: str, step: int, artifact: Artifact) -> CheckpointRecord:
    checkpoint_id = new_id("ckpt")
    now = utcnow()
    with db.begin() as conn:
        conn.execute(
            tables.checkpoints.insert().values(
                id=checkpoint_id,
                job_id=job_id,
                step=step,
                artifact_uri=artifact.uri,
                artifact_sha256=artifact.sha256,
                size_bytes=artifact.size_bytes,
                created_at=now,
            )
        )
    return CheckpointRecord(checkpoint_id, job_id, step, artifact, now)


def list_checkpoints(db: Database, job_id: str) -> list[CheckpointRecord]:
    query = (
        select(tables.checkpoints)
        .where(tables.checkpoints.c.job_id == job_id)
        .order_by(tables.checkpoints.c.step, tables.checkpoints.c.created_at)
    )
    with db.begin() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        CheckpointRecord(
            r["id"],
            r["job_id"],
            r["step"],
            Artifact(r["artifact_uri"], r["artifact_sha256"], r["size_bytes"]),
            r["created_at"],
        )
        for r in rows
    ]


def latest_checkpoint(db: Database, job_id: str) -> CheckpointRecord | None:
    records = list_checkpoints(db, job_id)
    return records[-1] if records else None
