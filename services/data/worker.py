"""Background threads that run queued prepare jobs in the data service's process.

Jobs are claimed from the database, so several replicas can share the queue. A job whose worker died
(its process was killed) stops heartbeating; any worker requeues it after `job_stale_seconds`, and it
runs again from the start: prepare is deterministic and publishes its version only at the very end.
"""

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta

from ftcommon.errors import ServiceError
from ftcommon.jobs import EventKind, Job, JobState, JobStore
from services.data.config import DataSettings
from services.data.prepare import PrepareCancelled, PrepareRunner

logger = logging.getLogger(__name__)

PREPARE_KIND = "prepare"


class PrepareWorkers:
    def __init__(self, jobs: JobStore, runner: PrepareRunner, settings: DataSettings) -> None:
        self.jobs = jobs
        self.runner = runner
        self.settings = settings
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def start(self) -> None:
        for index in range(self.settings.prepare_workers):
            thread = threading.Thread(
                target=self._loop, args=(f"{self._instance}-{index}",), name=f"prepare-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def _loop(self, worker_id: str) -> None:
        stale_after = timedelta(seconds=self.settings.job_stale_seconds)
        while not self._stop.is_set():
            try:
                self.jobs.requeue_stale(stale_after, self.settings.job_max_attempts)
                job = self.jobs.claim(worker_id, kind=PREPARE_KIND)
            except Exception:
                logger.exception("could not poll the prepare queue")
                job = None
            if job is None:
                self._wake.wait(self.settings.job_poll_seconds)
                self._wake.clear()
                continue
            self._run(job, worker_id)

    def _run(self, job: Job, worker_id: str) -> None:
        finished = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job.id, worker_id, finished), daemon=True)
        beat.start()
        try:
            record = self.runner.run(
                job.payload,
                progress=lambda fraction, message, metrics: self.jobs.emit(
                    job.id, EventKind.PROGRESS, message=message, progress=fraction, metrics=metrics
                ),
                cancelled=lambda: self.jobs.cancel_requested(job.id) or self._stop.is_set(),
            )
            self.jobs.transition(
                job.id,
                JobState.SUCCEEDED,
                message=f"prepared {record.id}",
                result={"prepared_version_id": record.id},
            )
        except PrepareCancelled:
            if self.jobs.cancel_requested(job.id):
                self.jobs.transition(job.id, JobState.CANCELLED, message="cancelled")
            else:
                # This process is shutting down: hand the job back for the next worker.
                self.jobs.transition(job.id, JobState.QUEUED, message="worker stopped; requeued")
        except ServiceError as err:
            self.jobs.transition(job.id, JobState.FAILED, error=err.details())
        except Exception as exc:
            logger.exception("prepare job failed", extra={"fields": {"job_id": job.id}})
            self.jobs.transition(
                job.id, JobState.FAILED, error=f"internal error: {type(exc).__name__}: {exc}"
            )
        finally:
            finished.set()
            beat.join()

    def _heartbeat(self, job_id: str, worker_id: str, finished: threading.Event) -> None:
        while not finished.wait(self.settings.job_heartbeat_seconds):
            try:
                self.jobs.heartbeat(job_id, worker_id)
            except Exception:
                logger.exception("heartbeat failed", extra={"fields": {"job_id": job_id}})
