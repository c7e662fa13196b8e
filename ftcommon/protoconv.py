"""Conversions between the runtime's records and the generated messages, used by every service."""

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from finetune.v1 import common_pb2
from ftcommon.artifacts import Artifact
from ftcommon.jobs import Event, Job


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value.replace(tzinfo=UTC) if value.tzinfo is None else value)
    return stamp


def artifact_ref(artifact: Artifact | None) -> common_pb2.ArtifactRef | None:
    if artifact is None:
        return None
    return common_pb2.ArtifactRef(uri=artifact.uri, sha256=artifact.sha256, size_bytes=artifact.size_bytes)


def job_status(job: Job) -> common_pb2.JobStatus:
    return common_pb2.JobStatus(
        id=job.id,
        state=int(job.state),
        progress=job.progress,
        error=job.error,
        created_at=timestamp(job.created_at),
        started_at=timestamp(job.started_at),
        finished_at=timestamp(job.finished_at),
        attempt=job.attempt,
    )


def job_event(event: Event) -> common_pb2.JobEvent:
    return common_pb2.JobEvent(
        job_id=event.job_id,
        index=event.index,
        time=timestamp(event.time),
        kind=int(event.kind),
        state=int(event.state) if event.state else 0,
        progress=event.progress,
        message=event.message,
        metrics=event.metrics,
    )
