"""The one worker loop every service runs its jobs with (prepare, train, evaluate).

A runner is the work itself: it gets a `JobContext`, reports progress through it, asks it whether to keep
going, and returns `Finished` or raises. The runtime does the rest, the same way for every kind of job:
it requeues jobs whose worker stopped heartbeating, claims one, heartbeats while the runner works, notices
a lost lease (another worker took the job over) and tells the runner to stop, and writes the outcome:

- finished: SUCCEEDED with the result, or CANCELLED when a cancel was asked for meanwhile;
- `JobStopped`: CANCELLED when asked for, PAUSED when a pause was asked for (the runner saved what it
  resumes from), QUEUED again when this process is shutting down or the runner stopped for another reason,
  nothing at all when the lease was lost (the job is someone else's now);
- `JobFailed`, a `ServiceError` or any other exception: FAILED with its message.

Every outcome is written under the worker's lease (see `jobs.Lease`), so a worker that lost its job can
never overwrite what the job's new owner decides.
"""

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from pydantic import BaseModel, Field

from ftcommon.errors import ServiceError, describe_rpc_error
from ftcommon.jobs import EventKind, Job, JobState, JobStore, Lease

logger = logging.getLogger(__name__)


class JobStopped(Exception):
    """Raised by a runner that stopped before the end because its context said so (cancelled, lease
    lost, process shutting down). The runtime decides from the context what becomes of the job."""


class JobFailed(Exception):
    """A runner's failure whose message is the job's error as it stands (no exception type prepended)."""


class JobRuntimeSettings(BaseModel):
    """How a service runs its jobs: nested as `jobs` in each service's settings, so the variables are
    FT_<SERVICE>_JOBS__POLL_SECONDS and so on. Services subclass it to change a default."""

    # Worker threads in one process; more processes (replicas) can share the queue.
    workers: int = Field(1, ge=1)
    # How often an idle worker looks for a queued job.
    poll_seconds: float = Field(0.5, gt=0)
    # How often a busy worker records that it is alive.
    heartbeat_seconds: float = Field(2.0, gt=0)
    # A running job whose heartbeat is older than this lost its worker (a killed process) and is requeued.
    stale_after_seconds: float = Field(30.0, gt=0)
    # A job whose worker was lost this many times fails instead of being requeued forever.
    max_attempts: int = Field(3, ge=1)


def fold_older_job_setting_names(data: Any, env_prefix: str, older_names: Mapping[str, str]) -> Any:
    """For a `mode="before"` validator of a service's settings: settings spelled the older flat way,
    as keyword arguments or as variables (e.g. FT_DATA_JOB_POLL_SECONDS), go into the nested `jobs`
    block. The nested spelling wins where both are given; a keyword argument wins over a variable."""
    if not isinstance(data, dict):
        return data
    given = data.get("jobs") or {}
    jobs = dict(given.model_dump(exclude_unset=True) if isinstance(given, BaseModel) else given)
    found = False
    for older, name in older_names.items():
        if older in data:
            value = data.pop(older)
        elif (variable := os.environ.get(f"{env_prefix}{older}".upper())) is not None:
            value = variable
        else:
            continue
        jobs.setdefault(name, value)
        found = True
    return {**data, "jobs": jobs} if found else data


@dataclass(frozen=True)
class Finished:
    """What a runner returns when its job is done: the job's result and the message of its last event."""

    result: dict[str, Any]
    message: str = "succeeded"


class JobContext:
    """What a runner sees of its job while it runs."""

    def __init__(self, store: JobStore, job: Job, shutting_down: threading.Event) -> None:
        self.store = store
        self.job = job
        self.lease = Lease.of(job)
        self._shutting_down = shutting_down
        self._lease_lost = threading.Event()

    @property
    def worker_id(self) -> str:
        return self.lease.worker_id

    @property
    def lease_lost(self) -> bool:
        return self._lease_lost.is_set()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down.is_set()

    def cancel_requested(self) -> bool:
        return self.store.cancel_requested(self.job.id)

    def pause_requested(self) -> bool:
        """A pause is the runner's to honour at a safe point (it raises JobStopped once its state is saved);
        it does not make keep_going() false, so a supervisor does not kill work that is saving itself."""
        return self.store.pause_requested(self.job.id)

    def keep_going(self) -> bool:
        """False once the job was cancelled, taken over by another worker, or this process stops."""
        return not (self.lease_lost or self.shutting_down or self.cancel_requested())

    def stop_if_asked(self) -> None:
        """Raises JobStopped when the runner should not go on."""
        if not self.keep_going():
            raise JobStopped()

    def progress(self, fraction: float, message: str, metrics: dict[str, float] | None = None) -> None:
        self.store.emit(self.job.id, EventKind.PROGRESS, message=message, progress=fraction, metrics=metrics)

    def log(self, message: str) -> None:
        self.store.emit(self.job.id, EventKind.LOG, message=message)

    def lose_lease(self) -> None:
        self._lease_lost.set()


JobRunner = Callable[[JobContext], Finished]


@dataclass(frozen=True)
class _Outcome:
    state: JobState
    message: str = ""
    error: str = ""
    result: dict[str, Any] | None = None


class JobRuntime:
    """Worker threads that claim and run one kind of job from a JobStore."""

    def __init__(self, store: JobStore, kind: str, runner: JobRunner, settings: JobRuntimeSettings) -> None:
        self.store = store
        self.kind = kind
        self.runner = runner
        self.settings = settings
        self._shutting_down = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._instance = f"{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def start(self) -> None:
        for index in range(self.settings.workers):
            thread = threading.Thread(
                target=self._loop,
                args=(f"{self._instance}-{index}",),
                name=f"{self.kind}-{index}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown: running jobs are told to stop and go back to the queue."""
        self._shutting_down.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def _loop(self, worker_id: str) -> None:
        while not self._shutting_down.is_set():
            try:
                found = self.poll_once(worker_id)
            except Exception:  # the loop outlives a database hiccup; a runner's errors are outcomes already
                logger.exception("could not poll the job queue", extra={"fields": {"kind": self.kind}})
                found = False
            if not found:
                self._wake.wait(self.settings.poll_seconds)
                self._wake.clear()

    def poll_once(self, worker_id: str) -> bool:
        """Requeues jobs of lost workers, then claims and runs one job; False when none was queued."""
        stale_after = timedelta(seconds=self.settings.stale_after_seconds)
        for job_id in self.store.requeue_stale(stale_after, self.settings.max_attempts):
            logger.warning("requeued a job whose worker was lost", extra={"fields": {"job_id": job_id}})
        job = self.store.claim(worker_id, kind=self.kind)
        if job is None:
            return False
        self.run(job)
        return True

    def run(self, job: Job) -> None:
        """Runs a job this worker claimed and writes its outcome."""
        context = JobContext(self.store, job, self._shutting_down)
        heartbeat = _Heartbeat(context, self.settings.heartbeat_seconds)
        heartbeat.start()
        try:
            self._settle(context, self._outcome(context))
        finally:
            heartbeat.stop()

    def _outcome(self, context: JobContext) -> _Outcome:
        try:
            finished = self.runner(context)
        except JobStopped:
            return self._stopped(context)
        except JobFailed as err:
            return _Outcome(JobState.FAILED, error=str(err))
        except ServiceError as err:
            return _Outcome(JobState.FAILED, error=err.details())
        except grpc.RpcError as err:  # str() of it is a multi-line repr with debug_error_string
            return _Outcome(
                JobState.FAILED, error=f"a call to another service failed: {describe_rpc_error(err)}"
            )
        except Exception as exc:
            logger.exception("job failed", extra={"fields": {"job_id": context.job.id, "kind": self.kind}})
            return _Outcome(JobState.FAILED, error=f"internal error: {type(exc).__name__}: {exc}")
        if context.cancel_requested():
            return _Outcome(JobState.CANCELLED, message="cancelled")
        return _Outcome(JobState.SUCCEEDED, message=finished.message, result=finished.result)

    @staticmethod
    def _stopped(context: JobContext) -> _Outcome | None:
        if context.lease_lost:
            return None
        if context.cancel_requested():
            return _Outcome(JobState.CANCELLED, message="cancelled")
        if context.pause_requested():
            return _Outcome(JobState.PAUSED, message="paused")
        # This process is shutting down (or the runner gave the job up): the next worker takes it.
        return _Outcome(JobState.QUEUED, message="worker stopped; requeued")

    def _settle(self, context: JobContext, outcome: _Outcome | None) -> None:
        job_id = context.job.id
        written = outcome is not None and self.store.transition(
            job_id,
            outcome.state,
            message=outcome.message,
            error=outcome.error,
            result=outcome.result,
            lease=context.lease,
        )
        if not written:
            logger.warning(
                "the job is no longer this worker's; its outcome was left to the new owner",
                extra={"fields": {"job_id": job_id, "worker_id": context.worker_id}},
            )


class _Heartbeat:
    """Records the worker's liveness beside the runner; a refused heartbeat means the lease is lost."""

    def __init__(self, context: JobContext, interval: float) -> None:
        self.context = context
        self.interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{context.job.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        lease = self.context.lease
        while not self._done.wait(self.interval):
            try:
                alive = self.context.store.heartbeat(lease.job_id, lease.worker_id)
            except Exception:  # a database hiccup: the next beat may get through before the lease goes stale
                logger.exception("heartbeat failed", extra={"fields": {"job_id": lease.job_id}})
                continue
            if not alive:
                self.context.lose_lease()
                return
