"""The gateway's records of OpenAI files, fine-tuning jobs and their events (its own tables only).

Every read takes the caller's project: another project's file or job looks exactly like one that does not
exist (404), as on OpenAI.
"""

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, select, update

from ftcommon.db import Database, utcnow
from ftcommon.errors import NotFound
from ftcommon.ids import new_id
from services.inference import tables
from services.inference.fine_tuning_protocol import TERMINAL_STATUSES


def epoch_seconds(value: datetime | None) -> int | None:
    return int(value.replace(tzinfo=UTC).timestamp()) if value else None


@dataclass(frozen=True)
class FileRecord:
    id: str
    project: str
    dataset_id: str
    filename: str
    purpose: str
    bytes: int
    created_at: datetime
    artifact_uri: str | None = None  # files the gateway wrote (result files); None for uploads


@dataclass(frozen=True)
class JobRecord:
    id: str
    project: str
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    metadata: dict[str, str] | None
    hyperparameters: dict[str, Any]
    status: str
    prepare_job_id: str | None
    train_job_id: str | None
    fine_tuned_model: str | None
    merged_model_id: str | None
    trained_tokens: int | None
    error: dict[str, str] | None
    cancel_requested: bool
    created_at: datetime
    finished_at: datetime | None
    estimated_finish: datetime | None = None
    result_files: list[str] = field(default_factory=list)
    method: str = "supervised"  # OpenAI's method.type: supervised | dpo

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class EventRecord:
    id: str
    job_id: str
    source: str
    source_index: int
    level: str
    type: str
    message: str
    data: dict[str, Any] | None
    created_at: datetime
    seq: int = 0


@dataclass
class NewEvent:
    source: str
    source_index: int
    message: str
    type: str = "message"
    level: str = "info"
    data: dict[str, Any] | None = field(default=None)


class FineTuningRecords:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Files

    def add_file(
        self,
        project: str,
        dataset_id: str,
        filename: str,
        purpose: str,
        size: int,
        artifact_uri: str | None = None,
    ) -> FileRecord:
        record = FileRecord(
            new_id("file"), project, dataset_id, filename, purpose, size, utcnow(), artifact_uri
        )
        with self.db.begin() as conn:
            conn.execute(tables.openai_files.insert().values(**record.__dict__))
        return record

    def get_file(self, project: str, file_id: str, param: str = "file_id") -> FileRecord:
        files = tables.openai_files
        with self.db.begin() as conn:
            row = (
                conn.execute(select(files).where(and_(files.c.id == file_id, files.c.project == project)))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"No such File object: {file_id}", field=param)
        return FileRecord(**row)

    def list_files(
        self, project: str, purpose: str | None, after: str | None, limit: int, newest_first: bool
    ) -> tuple[list[FileRecord], bool]:
        files = tables.openai_files
        query = select(files).where(files.c.project == project)
        if purpose:
            query = query.where(files.c.purpose == purpose)
        order = (
            (files.c.created_at.desc(), files.c.id.desc())
            if newest_first
            else (files.c.created_at, files.c.id)
        )
        if after:
            cursor = self.get_file(project, after, "after")
            keyset = (files.c.created_at, files.c.id)
            if newest_first:
                query = query.where(_before(keyset, (cursor.created_at, cursor.id)))
            else:
                query = query.where(_before((cursor.created_at, cursor.id), keyset))
        with self.db.begin() as conn:
            rows = conn.execute(query.order_by(*order).limit(limit + 1)).mappings().all()
        return [FileRecord(**row) for row in rows[:limit]], len(rows) > limit

    def delete_file(self, project: str, file_id: str) -> FileRecord:
        record = self.get_file(project, file_id)
        with self.db.begin() as conn:
            conn.execute(delete(tables.openai_files).where(tables.openai_files.c.id == file_id))
        return record

    # Jobs

    def add_job(self, record: JobRecord) -> JobRecord:
        values = {
            **record.__dict__,
            "metadata": json.dumps(record.metadata) if record.metadata is not None else None,
            "hyperparameters": json.dumps(record.hyperparameters),
            "error": None,
            "cancel_requested": 0,
            "result_files": json.dumps(record.result_files),
        }
        with self.db.begin() as conn:
            conn.execute(tables.fine_tuning_jobs.insert().values(**values))
        return self.get_job(record.project, record.id)

    def get_job(self, project: str | None, job_id: str) -> JobRecord:
        """`project` None: any project's (the gateway's own follower)."""
        jobs = tables.fine_tuning_jobs
        query = select(jobs).where(jobs.c.id == job_id)
        if project is not None:
            query = query.where(jobs.c.project == project)
        with self.db.begin() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(f"Could not find fine-tuning job {job_id}", field="fine_tuning_job_id")
        return _job(row)

    def list_jobs(
        self, project: str, after: str | None, limit: int, metadata: dict[str, str]
    ) -> tuple[list[JobRecord], bool]:
        """Newest first; `after` is the last job of the previous page. The metadata filter is applied on
        this side of the query (metadata is a small JSON object), so pages are filled until `limit`."""
        jobs = tables.fine_tuning_jobs
        query = select(jobs).where(jobs.c.project == project)
        if after:
            cursor = self.get_job(project, after)
            query = query.where(_before((jobs.c.created_at, jobs.c.id), (cursor.created_at, cursor.id)))
        query = query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        found: list[JobRecord] = []
        with self.db.begin() as conn:
            for row in conn.execute(query).mappings():
                record = _job(row)
                if all((record.metadata or {}).get(k) == v for k, v in metadata.items()):
                    found.append(record)
                    if len(found) > limit:
                        break
        return found[:limit], len(found) > limit

    def unfinished_jobs(self) -> list[JobRecord]:
        jobs = tables.fine_tuning_jobs
        with self.db.begin() as conn:
            rows = conn.execute(select(jobs).where(jobs.c.status.not_in(TERMINAL_STATUSES))).mappings().all()
        return [_job(row) for row in rows]

    def update_job(self, job_id: str, **values: Any) -> JobRecord:
        """Changes a job that has not ended; a finished job keeps its outcome (a late cancel cannot undo
        a success, nor a success a cancel)."""
        if "error" in values and values["error"] is not None:
            values["error"] = json.dumps(values["error"])
        if "result_files" in values:
            values["result_files"] = json.dumps(values["result_files"])
        if values.get("status") in TERMINAL_STATUSES:
            values.setdefault("finished_at", utcnow())
        jobs = tables.fine_tuning_jobs
        with self.db.begin() as conn:
            conn.execute(
                update(jobs)
                .where(and_(jobs.c.id == job_id, jobs.c.status.not_in(TERMINAL_STATUSES)))
                .values(**values)
            )
        return self.get_job(None, job_id)

    def jobs_validating_file(self, file_id: str) -> list[str]:
        """Jobs that still read the file (until prepared, a job needs its data)."""
        jobs = tables.fine_tuning_jobs
        query = select(jobs.c.id).where(
            and_(
                jobs.c.status == "validating_files",
                (jobs.c.training_file == file_id) | (jobs.c.validation_file == file_id),
            )
        )
        with self.db.begin() as conn:
            return list(conn.execute(query).scalars())

    def job_for_model(self, project: str, fine_tuned_model: str) -> JobRecord | None:
        jobs = tables.fine_tuning_jobs
        with self.db.begin() as conn:
            row = (
                conn.execute(
                    select(jobs).where(
                        and_(jobs.c.project == project, jobs.c.fine_tuned_model == fine_tuned_model)
                    )
                )
                .mappings()
                .first()
            )
        return _job(row) if row else None

    def fine_tuned_models(self, project: str) -> list[JobRecord]:
        jobs = tables.fine_tuning_jobs
        query = (
            select(jobs)
            .where(and_(jobs.c.project == project, jobs.c.fine_tuned_model.is_not(None)))
            .order_by(jobs.c.created_at)
        )
        with self.db.begin() as conn:
            return [_job(row) for row in conn.execute(query).mappings()]

    def forget_model(self, job_id: str) -> None:
        jobs = tables.fine_tuning_jobs
        with self.db.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(fine_tuned_model=None))

    # Events

    def add_event(self, job_id: str, event: NewEvent) -> None:
        with self.db.begin() as conn:
            conn.execute(
                tables.fine_tuning_events.insert().values(
                    id=new_id("ftevent"),
                    job_id=job_id,
                    source=event.source,
                    source_index=event.source_index,
                    level=event.level,
                    type=event.type,
                    message=event.message,
                    data=json.dumps(event.data) if event.data is not None else None,
                    created_at=utcnow(),
                )
            )

    def last_source_index(self, job_id: str, source: str) -> int:
        events = tables.fine_tuning_events
        with self.db.begin() as conn:
            value = conn.execute(
                select(func.max(events.c.source_index)).where(
                    and_(events.c.job_id == job_id, events.c.source == source)
                )
            ).scalar()
        return int(value or 0)

    def metrics_events(self, job_id: str) -> list[EventRecord]:
        """The training metrics events of a job, oldest first."""
        events = tables.fine_tuning_events
        query = (
            select(events)
            .where(and_(events.c.job_id == job_id, events.c.type == "metrics"))
            .order_by(events.c.seq)
        )
        with self.db.begin() as conn:
            return [_event(row) for row in conn.execute(query).mappings()]

    def list_events(self, job_id: str, after: str | None, limit: int) -> tuple[list[EventRecord], bool]:
        """Newest first, as OpenAI lists them; `after` is the last event of the previous page."""
        events = tables.fine_tuning_events
        query = select(events).where(events.c.job_id == job_id)
        if after:
            with self.db.begin() as conn:
                cursor = conn.execute(
                    select(events.c.seq).where(and_(events.c.id == after, events.c.job_id == job_id))
                ).scalar()
            if cursor is None:
                raise NotFound(f"no event {after} in job {job_id}", field="after")
            query = query.where(events.c.seq < cursor)
        with self.db.begin() as conn:
            rows = conn.execute(query.order_by(events.c.seq.desc()).limit(limit + 1)).mappings().all()
        return [_event(row) for row in rows[:limit]], len(rows) > limit


def _before(left: tuple[Any, Any], right: tuple[Any, Any]) -> Any:
    """left < right in (created_at, id) order, spelled out because SQLite has no row-value comparison on
    every version the platform supports."""
    return (left[0] < right[0]) | ((left[0] == right[0]) & (left[1] < right[1]))


def _job(row: Any) -> JobRecord:
    return JobRecord(
        id=row["id"],
        project=row["project"],
        model=row["model"],
        training_file=row["training_file"],
        validation_file=row["validation_file"],
        suffix=row["suffix"],
        seed=row["seed"],
        metadata=json.loads(row["metadata"]) if row["metadata"] else None,
        hyperparameters=json.loads(row["hyperparameters"]),
        status=row["status"],
        prepare_job_id=row["prepare_job_id"],
        train_job_id=row["train_job_id"],
        fine_tuned_model=row["fine_tuned_model"],
        merged_model_id=row["merged_model_id"],
        trained_tokens=row["trained_tokens"],
        error=json.loads(row["error"]) if row["error"] else None,
        cancel_requested=bool(row["cancel_requested"]),
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        estimated_finish=row["estimated_finish"],
        result_files=json.loads(row["result_files"]) if row["result_files"] else [],
        method=row["method"],
    )


def _event(row: Any) -> EventRecord:
    return EventRecord(
        id=row["id"],
        job_id=row["job_id"],
        source=row["source"],
        source_index=row["source_index"],
        level=row["level"],
        type=row["type"],
        message=row["message"],
        data=json.loads(row["data"]) if row["data"] else None,
        created_at=row["created_at"],
        seq=row["seq"],
    )
