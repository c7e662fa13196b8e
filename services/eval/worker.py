"""The eval service's worker thread: claims queued runs, executes them, heartbeats, honours cancel.

Durability comes from the job store: a run whose worker died (process killed, host lost) stops
heartbeating, `requeue_stale` puts it back in the queue and the next claim runs it again from the
start (greedy decoding and a seeded bootstrap make the rerun give the same report). A run that
has already used `max_attempts` fails instead of looping forever, so none stays stuck in running.
"""

import logging
import threading
import uuid
from datetime import timedelta

from ftcommon.errors import ServiceError
from ftcommon.jobs import Job, JobState, JobStore
from services.eval.clients import RunStopped
from services.eval.config import EvalSettings
from services.eval.runner import RunExecutor

logger = logging.getLogger("eval.worker")

KIND = "eval"


class EvalWorker:
    def __init__(self, settings: EvalSettings, store: JobStore, executor: RunExecutor) -> None:
        self.settings = settings
        self.store = store
        self.executor = executor
        self.worker_id = f"eval-worker-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.worker_id, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        stale_after = timedelta(seconds=self.settings.stale_after_seconds)
        while not self._stop.is_set():
            try:
                for job_id in self.store.requeue_stale(stale_after, self.settings.max_attempts):
                    logger.warning("requeued run whose worker was lost", extra={"fields": {"job_id": job_id}})
                job = self.store.claim(self.worker_id, kind=KIND)
                if job is None:
                    self._stop.wait(self.settings.poll_seconds)
                    continue
                self.run_claimed(job)
            except Exception:  # the loop must survive a database hiccup; the run itself is handled below
                logger.exception("eval worker loop error")
                self._stop.wait(self.settings.poll_seconds)

    def run_claimed(self, job: Job) -> None:
        lease = _Heartbeat(self.store, job.id, self.worker_id, self.settings.heartbeat_seconds)
        lease.start()

        def keep_going() -> bool:
            return lease.alive and not self._stop.is_set() and not self.store.cancel_requested(job.id)

        try:
            result = self.executor.execute(job.id, job.payload, keep_going)
        except RunStopped:
            self._stopped(job.id)
            return
        except ServiceError as err:
            self.store.transition(job.id, JobState.FAILED, error=err.details())
            return
        except Exception as err:
            logger.exception("eval run failed", extra={"fields": {"job_id": job.id}})
            self.store.transition(job.id, JobState.FAILED, error=f"{type(err).__name__}: {err}")
            return
        finally:
            lease.stop()
        if self.store.cancel_requested(job.id):
            self._stopped(job.id)
        else:
            self.store.transition(job.id, JobState.SUCCEEDED, message="report ready", result=result)

    def _stopped(self, job_id: str) -> None:
        """Cancelled by the caller, or this process is shutting down: the run goes back to the queue."""
        if self.store.cancel_requested(job_id):
            self.store.transition(job_id, JobState.CANCELLED, message="cancelled")
        else:
            self.store.transition(job_id, JobState.QUEUED, message="worker stopping; requeued")


class _Heartbeat:
    def __init__(self, store: JobStore, job_id: str, worker_id: str, interval: float) -> None:
        self.store = store
        self.job_id = job_id
        self.worker_id = worker_id
        self.interval = interval
        self.alive = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.interval + 1)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.store.heartbeat(self.job_id, self.worker_id):
                self.alive = False  # the run was requeued or ended elsewhere: it is no longer ours
                return
