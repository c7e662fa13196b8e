"""The durable job state machine every long operation uses (prepare, train, evaluate).

queued -> running -> succeeded | failed | cancelled, with running -> queued when a worker died and
the job is picked up again, and paused (asked for: the runner stops at a safe point with its state saved)
-> queued again on resume. Jobs and their event logs live in the owning service's database, so
progress survives any process: a watcher reads events by index, workers claim jobs atomically,
and heartbeats tell a live worker from a dead one.
"""

import enum
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from alembic.operations import Operations
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    false,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from ftcommon.db import Database, utcnow
from ftcommon.errors import FailedPrecondition, NotFound
from ftcommon.ids import new_id


class JobState(enum.IntEnum):
    # Values equal finetune.v1.JobState so they convert with a plain int().
    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5
    PAUSED = 6

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class EventKind(enum.IntEnum):
    # Values equal finetune.v1.EventKind.
    STATE = 1
    PROGRESS = 2
    TRAIN_STEP = 3
    VALIDATION = 4
    CHECKPOINT = 5
    LOG = 6


ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED, JobState.PAUSED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED, JobState.PAUSED}
    ),
    JobState.PAUSED: frozenset({JobState.QUEUED, JobState.CANCELLED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    state: JobState
    payload: dict[str, Any]
    result: dict[str, Any]
    error: str
    progress: float
    attempt: int
    worker_id: str
    cancel_requested: bool
    idempotency_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    pause_requested: bool = False


@dataclass(frozen=True)
class Lease:
    """One worker's hold on one attempt of a running job. An outcome written under a lease applies only
    while the job is still that attempt of that worker's: a worker that lost its job (it looked dead and
    the job was requeued and claimed again) cannot overwrite what the new owner decides."""

    job_id: str
    worker_id: str
    attempt: int

    @classmethod
    def of(cls, claimed: Job) -> "Lease":
        return cls(claimed.id, claimed.worker_id, claimed.attempt)


@dataclass(frozen=True)
class Event:
    job_id: str
    index: int
    time: datetime
    kind: EventKind
    state: JobState | None
    progress: float
    message: str
    metrics: dict[str, float]


def job_tables(metadata: MetaData, prefix: str) -> tuple[Table, Table]:
    jobs = Table(
        f"{prefix}_jobs",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("kind", String(32), nullable=False),
        Column("state", Integer, nullable=False, index=True),
        Column("payload", Text, nullable=False),
        Column("result", Text, nullable=False, default="{}"),
        Column("error", Text, nullable=False, default=""),
        Column("progress", Float, nullable=False, default=0.0),
        Column("attempt", Integer, nullable=False, default=0),
        Column("worker_id", String(128), nullable=False, default=""),
        Column("cancel_requested", Boolean, nullable=False, default=False),
        Column("idempotency_key", String(200), unique=True, nullable=True),
        Column("created_at", DateTime, nullable=False),
        Column("started_at", DateTime, nullable=True),
        Column("finished_at", DateTime, nullable=True),
        Column("heartbeat_at", DateTime, nullable=True),
        Column("pause_requested", Boolean, nullable=False, default=False, server_default=false()),
    )
    events = Table(
        f"{prefix}_job_events",
        metadata,
        Column("job_id", String(64), primary_key=True),
        Column("idx", Integer, primary_key=True),
        Column("time", DateTime, nullable=False),
        Column("kind", Integer, nullable=False),
        Column("state", Integer, nullable=True),
        Column("progress", Float, nullable=False, default=0.0),
        Column("message", Text, nullable=False, default=""),
        Column("metrics", Text, nullable=False, default="{}"),
    )
    return jobs, events


def add_pause_requested(jobs_table: str) -> Callable[[Operations], None]:
    """The migration that adds `pause_requested` to a service's jobs table made before pausing existed (a
    database created since has it: the first migration creates tables from the metadata)."""

    def upgrade(op: Operations) -> None:
        if "pause_requested" not in {c["name"] for c in inspect(op.get_bind()).get_columns(jobs_table)}:
            op.add_column(
                jobs_table, Column("pause_requested", Boolean, nullable=False, server_default=false())
            )

    return upgrade


class JobStore:
    def __init__(self, db: Database, jobs: Table, events: Table, id_prefix: str) -> None:
        self.db = db
        self.jobs = jobs
        self.events = events
        self.id_prefix = id_prefix

    # Creating and reading

    def create(self, kind: str, payload: dict[str, Any], idempotency_key: str | None = None) -> Job:
        """Queues a job; a repeated idempotency key returns the job it created the first time."""
        if idempotency_key:
            existing = self.find_by_idempotency_key(idempotency_key)
            if existing:
                return existing
        job_id = new_id(self.id_prefix)
        now = utcnow()
        try:
            with self.db.begin() as conn:
                conn.execute(
                    self.jobs.insert().values(
                        id=job_id,
                        kind=kind,
                        state=int(JobState.QUEUED),
                        payload=json.dumps(payload),
                        result="{}",
                        error="",
                        progress=0.0,
                        attempt=0,
                        worker_id="",
                        cancel_requested=False,
                        idempotency_key=idempotency_key or None,
                        created_at=now,
                    )
                )
                self._append(conn, job_id, EventKind.STATE, state=JobState.QUEUED, message="queued")
        except IntegrityError:
            existing = self.find_by_idempotency_key(idempotency_key or "")
            if existing:
                return existing
            raise
        return self.get(job_id)

    def find_by_idempotency_key(self, key: str) -> Job | None:
        with self.db.begin() as conn:
            row = conn.execute(select(self.jobs).where(self.jobs.c.idempotency_key == key)).mappings().first()
        return self._job(row) if row else None

    def get(self, job_id: str) -> Job:
        with self.db.begin() as conn:
            row = conn.execute(select(self.jobs).where(self.jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise NotFound(f"job {job_id} does not exist", field="id")
        return self._job(row)

    def list_jobs(
        self, state: JobState | None, offset: int, limit: int, kind: str | None = None
    ) -> list[Job]:
        query = select(self.jobs).order_by(self.jobs.c.created_at.desc(), self.jobs.c.id)
        if state is not None:
            query = query.where(self.jobs.c.state == int(state))
        if kind is not None:
            query = query.where(self.jobs.c.kind == kind)
        with self.db.begin() as conn:
            rows = conn.execute(query.offset(offset).limit(limit)).mappings().all()
        return [self._job(r) for r in rows]

    # Claiming and running

    def claim(self, worker_id: str, kind: str | None = None) -> Job | None:
        """Atomically takes the oldest queued job. FOR UPDATE SKIP LOCKED lets PostgreSQL workers pass
        each other; on SQLite the guarded UPDATE below is the arbiter (one writer at a time)."""
        query = select(self.jobs.c.id).where(self.jobs.c.state == int(JobState.QUEUED))
        if kind is not None:
            query = query.where(self.jobs.c.kind == kind)
        query = query.order_by(self.jobs.c.created_at).limit(1).with_for_update(skip_locked=True)
        with self.db.begin() as conn:
            job_id = conn.execute(query).scalar()
            if job_id is None:
                return None
            now = utcnow()
            claimed = conn.execute(
                update(self.jobs)
                .where(and_(self.jobs.c.id == job_id, self.jobs.c.state == int(JobState.QUEUED)))
                .values(
                    state=int(JobState.RUNNING),
                    worker_id=worker_id,
                    heartbeat_at=now,
                    started_at=func.coalesce(self.jobs.c.started_at, now),
                    attempt=self.jobs.c.attempt + 1,
                )
            ).rowcount
            if claimed != 1:
                return None
            self._append(
                conn, job_id, EventKind.STATE, state=JobState.RUNNING, message=f"claimed by {worker_id}"
            )
        return self.get(job_id)

    def heartbeat(self, job_id: str, worker_id: str) -> bool:
        """Records liveness; False when the job is no longer this worker's to run."""
        with self.db.begin() as conn:
            return (
                conn.execute(
                    update(self.jobs)
                    .where(
                        and_(
                            self.jobs.c.id == job_id,
                            self.jobs.c.worker_id == worker_id,
                            self.jobs.c.state == int(JobState.RUNNING),
                        )
                    )
                    .values(heartbeat_at=utcnow())
                ).rowcount
                == 1
            )

    def requeue_stale(self, older_than: timedelta, max_attempts: int = 3) -> list[str]:
        """Running jobs whose worker stopped heartbeating go back to the queue to resume; a job that has
        already lost `max_attempts` workers fails instead, so one that kills its worker cannot loop."""
        cutoff = utcnow() - older_than
        with self.db.begin() as conn:
            stale = conn.execute(
                select(
                    self.jobs.c.id,
                    self.jobs.c.cancel_requested,
                    self.jobs.c.attempt,
                    self.jobs.c.pause_requested,
                ).where(and_(self.jobs.c.state == int(JobState.RUNNING), self.jobs.c.heartbeat_at < cutoff))
            ).all()
        requeued = []
        for job_id, cancel_requested, attempt, pause_requested in stale:
            if cancel_requested:
                self.transition(
                    job_id,
                    JobState.CANCELLED,
                    message="cancelled while its worker was lost",
                    require_from={JobState.RUNNING},
                )
            elif pause_requested:
                # Its last checkpoint is where it resumes from, as after any lost worker.
                self.transition(
                    job_id,
                    JobState.PAUSED,
                    message="paused while its worker was lost",
                    require_from={JobState.RUNNING},
                )
            elif attempt >= max_attempts:
                self.transition(
                    job_id,
                    JobState.FAILED,
                    error=f"gave up: its worker was lost on each of {attempt} attempts",
                    require_from={JobState.RUNNING},
                )
            elif self.transition(
                job_id, JobState.QUEUED, message="worker lost; requeued", require_from={JobState.RUNNING}
            ):
                requeued.append(job_id)
        return requeued

    def transition(
        self,
        job_id: str,
        target: JobState,
        *,
        message: str = "",
        error: str = "",
        result: dict[str, Any] | None = None,
        require_from: set[JobState] | None = None,
        lease: Lease | None = None,
    ) -> bool:
        """Moves a job along the state machine; False when it was not in an allowed state, or, with a
        lease, when the job is no longer that running attempt of that worker's."""
        allowed_from = {s for s, targets in ALLOWED_TRANSITIONS.items() if target in targets}
        if require_from is not None:
            allowed_from &= require_from
        guard = [self.jobs.c.id == job_id]
        if lease is not None:
            allowed_from &= {JobState.RUNNING}
            guard += [self.jobs.c.worker_id == lease.worker_id, self.jobs.c.attempt == lease.attempt]
        guard.append(self.jobs.c.state.in_([int(s) for s in allowed_from]))
        values: dict[str, Any] = {"state": int(target)}
        if target.terminal:
            values["finished_at"] = utcnow()
        if target == JobState.SUCCEEDED:
            values["progress"] = 1.0
        if target in (JobState.QUEUED, JobState.PAUSED):
            values["worker_id"] = ""
        if error:
            values["error"] = error
        if result is not None:
            values["result"] = json.dumps(result)
        with self.db.begin() as conn:
            changed = conn.execute(update(self.jobs).where(and_(*guard)).values(**values)).rowcount
            if changed == 1:
                self._append(
                    conn,
                    job_id,
                    EventKind.STATE,
                    state=target,
                    message=message or error,
                    progress=1.0 if target == JobState.SUCCEEDED else None,
                )
        return changed == 1

    def request_cancel(self, job_id: str) -> Job:
        """Queued jobs cancel at once; running ones are flagged and their runner stops them."""
        job = self.get(job_id)
        if job.state.terminal:
            raise FailedPrecondition(f"job {job_id} already {job.state.name.lower()}", field="id")
        with self.db.begin() as conn:
            conn.execute(update(self.jobs).where(self.jobs.c.id == job_id).values(cancel_requested=True))
        self.transition(
            job_id, JobState.CANCELLED, message="cancelled", require_from={JobState.QUEUED, JobState.PAUSED}
        )
        return self.get(job_id)

    def request_pause(self, job_id: str) -> Job:
        """Queued jobs pause at once; running ones are flagged and their runner stops at a safe point,
        saving what it resumes from. Asking again changes nothing."""
        job = self.get(job_id)
        if job.state.terminal:
            raise FailedPrecondition(f"job {job_id} already {job.state.name.lower()}", field="id")
        if job.state == JobState.PAUSED:
            return job
        with self.db.begin() as conn:
            conn.execute(update(self.jobs).where(self.jobs.c.id == job_id).values(pause_requested=True))
        self.transition(job_id, JobState.PAUSED, message="paused", require_from={JobState.QUEUED})
        return self.get(job_id)

    def resume(self, job_id: str) -> Job:
        """A paused job goes back to the queue; a pause not taken yet is withdrawn. Asking again (or for a
        job that was never paused) changes nothing."""
        job = self.get(job_id)
        if job.state.terminal:
            raise FailedPrecondition(f"job {job_id} already {job.state.name.lower()}", field="id")
        with self.db.begin() as conn:
            conn.execute(update(self.jobs).where(self.jobs.c.id == job_id).values(pause_requested=False))
        self.transition(job_id, JobState.QUEUED, message="resumed", require_from={JobState.PAUSED})
        return self.get(job_id)

    def pause_requested(self, job_id: str) -> bool:
        with self.db.begin() as conn:
            return bool(
                conn.execute(select(self.jobs.c.pause_requested).where(self.jobs.c.id == job_id)).scalar()
            )

    def cancel_requested(self, job_id: str) -> bool:
        with self.db.begin() as conn:
            return bool(
                conn.execute(select(self.jobs.c.cancel_requested).where(self.jobs.c.id == job_id)).scalar()
            )

    # Events

    def emit(
        self,
        job_id: str,
        kind: EventKind,
        *,
        message: str = "",
        progress: float | None = None,
        metrics: dict[str, float] | None = None,
    ) -> int:
        for _ in range(5):
            try:
                with self.db.begin() as conn:
                    index = self._append(
                        conn, job_id, kind, message=message, progress=progress, metrics=metrics
                    )
                    if progress is not None:
                        conn.execute(
                            update(self.jobs).where(self.jobs.c.id == job_id).values(progress=progress)
                        )
                    return index
            except IntegrityError:
                continue  # a concurrent writer took the index; take the next one
        raise RuntimeError(f"could not append an event to job {job_id}")

    def events_after(self, job_id: str, after_index: int, limit: int = 1000) -> list[Event]:
        with self.db.begin() as conn:
            rows = (
                conn.execute(
                    select(self.events)
                    .where(and_(self.events.c.job_id == job_id, self.events.c.idx > after_index))
                    .order_by(self.events.c.idx)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [
            Event(
                job_id=r["job_id"],
                index=r["idx"],
                time=r["time"],
                kind=EventKind(r["kind"]),
                state=JobState(r["state"]) if r["state"] else None,
                progress=r["progress"],
                message=r["message"],
                metrics=json.loads(r["metrics"]),
            )
            for r in rows
        ]

    def watch(
        self, job_id: str, after_index: int, is_active: Callable[[], bool], poll_seconds: float = 0.2
    ) -> Iterator[Event]:
        """Yields events after `after_index` until the job ends (or the caller goes away)."""
        self.get(job_id)
        last = after_index
        while is_active():
            batch = self.events_after(job_id, last)
            for event in batch:
                last = event.index
                yield event
            if not batch:
                if self.get(job_id).state.terminal and not self.events_after(job_id, last):
                    return
                time.sleep(poll_seconds)

    # Internals

    def _append(
        self,
        conn: Any,
        job_id: str,
        kind: EventKind,
        *,
        state: JobState | None = None,
        message: str = "",
        progress: float | None = None,
        metrics: dict[str, float] | None = None,
    ) -> int:
        # Locking the job row serializes appends to its event log: on PostgreSQL, concurrent writers would
        # otherwise read the same max(idx) and collide on the key. SQLite has one writer anyway.
        current_progress = conn.execute(
            select(self.jobs.c.progress).where(self.jobs.c.id == job_id).with_for_update()
        ).scalar()
        last = conn.execute(
            select(func.max(self.events.c.idx)).where(self.events.c.job_id == job_id)
        ).scalar()
        if progress is None:
            progress = current_progress or 0.0
        index = (last or 0) + 1
        conn.execute(
            self.events.insert().values(
                job_id=job_id,
                idx=index,
                time=utcnow(),
                kind=int(kind),
                state=int(state) if state is not None else None,
                progress=progress,
                message=message,
                metrics=json.dumps(metrics or {}),
            )
        )
        return index

    @staticmethod
    def _job(row: Any) -> Job:
        return Job(
            id=row["id"],
            kind=row["kind"],
            state=JobState(row["state"]),
            payload=json.loads(row["payload"]),
            result=json.loads(row["result"] or "{}"),
            error=row["error"] or "",
            progress=row["progress"] or 0.0,
            attempt=row["attempt"],
            worker_id=row["worker_id"] or "",
            cancel_requested=bool(row["cancel_requested"]),
            idempotency_key=row["idempotency_key"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            heartbeat_at=row["heartbeat_at"],
            pause_requested=bool(row["pause_requested"]),
        )
