"""A training worker: `python -m services.trainer.worker`. Run as many as there are machines or GPUs.

It claims queued jobs atomically, runs each in a child process (torchrun when the job wants several
processes), heartbeats while the child runs, terminates the child on cancel, and requeues jobs whose
worker stopped heartbeating so that they resume from their last checkpoint. A crashing job cannot take
the gRPC server or the worker down; a killed worker takes its child with it (parent-death signal),
so a requeued job never runs twice.
"""

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

from ftcommon.db import Database
from ftcommon.ids import new_id
from ftcommon.jobs import EventKind, Job, JobState
from ftcommon.logs import configure_logging
from services.trainer import tables
from services.trainer.config import TrainerSettings
from services.trainer.job_queue import EXIT_STOPPED, JOB_KIND, RESULT_FILE, job_store, job_work_dir

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
LOG_TAIL_CHARS = 2000


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM when the worker dies, even by SIGKILL."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def child_command(job: Job, worker_id: str) -> list[str]:
    processes = int(job.payload["hyperparameters"].get("num_processes", 1))
    entry = ["-m", "services.trainer.run_job", job.id, worker_id]
    if processes == 1:
        return [sys.executable, *entry]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        *entry,
    ]


class Worker:
    def __init__(self, settings: TrainerSettings, worker_id: str | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_id('w')}"
        self.db = Database(settings.resolved_database_url("trainer"), tables.metadata, tables.MIGRATIONS)
        self.db.migrate()
        self.store = job_store(self.db)
        self.stopping = threading.Event()

    def run_forever(self) -> None:
        logger.info("worker started", extra={"fields": {"worker_id": self.worker_id}})
        while not self.stopping.is_set():
            if not self.run_once():
                self.stopping.wait(self.settings.worker_poll_seconds)

    def run_once(self) -> bool:
        """Requeues abandoned jobs, then claims and runs one job; False when there was none."""
        for job_id in self.store.requeue_stale(
            timedelta(seconds=self.settings.stale_after_seconds), self.settings.max_attempts
        ):
            logger.info("requeued a job whose worker was lost", extra={"fields": {"job_id": job_id}})
        job = self.store.claim(self.worker_id, kind=JOB_KIND)
        if job is None:
            return False
        self.run_job(job)
        return True

    def run_job(self, job: Job) -> None:
        work_dir = job_work_dir(self.settings, job.id)
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / RESULT_FILE).unlink(missing_ok=True)
        log_path = work_dir / f"attempt-{job.attempt}.log"
        with open(log_path, "wb") as log:
            child = subprocess.Popen(
                child_command(job, self.worker_id),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._child_env(),
                cwd=Path(__file__).resolve().parents[2],
                start_new_session=True,  # its own process group: cancel stops torchrun and its ranks
                preexec_fn=_die_with_parent,
            )
        self.store.emit(job.id, EventKind.LOG, message=f"attempt {job.attempt}: job process pid {child.pid}")
        outcome = self._supervise(job, child)
        self._finish(job, child, outcome, work_dir, log_path)

    def _supervise(self, job: Job, child: subprocess.Popen) -> str:
        """Heartbeats until the child exits; returns 'exited', 'cancelled', 'lost' or 'shutdown'."""
        while True:
            try:
                child.wait(timeout=self.settings.heartbeat_seconds)
                return "exited"
            except subprocess.TimeoutExpired:
                pass
            if self.stopping.is_set():
                self._terminate(child)
                return "shutdown"
            if not self.store.heartbeat(job.id, self.worker_id):
                # Another worker requeued it (we looked dead) or it was cancelled while queued.
                self._terminate(child)
                return "lost"
            if self.store.cancel_requested(job.id):
                self._terminate(child)
                return "cancelled"

    def _finish(
        self, job: Job, child: subprocess.Popen, outcome: str, work_dir: Path, log_path: Path
    ) -> None:
        result_path = work_dir / RESULT_FILE
        if outcome == "cancelled" or (outcome == "exited" and self.store.cancel_requested(job.id)):
            self.store.transition(
                job.id, JobState.CANCELLED, message="cancelled", require_from={JobState.RUNNING}
            )
        elif outcome == "shutdown":
            self.store.transition(
                job.id, JobState.QUEUED, message="worker shut down; requeued", require_from={JobState.RUNNING}
            )
        elif outcome == "lost":
            logger.warning("job no longer ours", extra={"fields": {"job_id": job.id}})
        elif child.returncode == 0 and result_path.exists():
            result = json.loads(result_path.read_text())
            self.store.transition(
                job.id,
                JobState.SUCCEEDED,
                message="succeeded",
                result=result,
                require_from={JobState.RUNNING},
            )
        elif child.returncode == EXIT_STOPPED:
            # It stopped because the job stopped being ours; whoever owns it now decides its fate.
            logger.info("job process stopped early", extra={"fields": {"job_id": job.id}})
        else:
            tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
            logger.error("job process failed", extra={"fields": {"job_id": job.id, "log_tail": tail}})
            error = _last_error_line(tail) or f"job process exited with status {child.returncode}"
            self.store.transition(job.id, JobState.FAILED, error=error, require_from={JobState.RUNNING})

    def _terminate(self, child: subprocess.Popen) -> None:
        try:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait(timeout=self.settings.cancel_grace_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        except ProcessLookupError:
            child.wait()

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The child reads the same settings the worker was started with.
        for name, value in self.settings.model_dump(mode="json").items():
            if isinstance(value, str | int | float | bool):
                env[f"FT_TRAINER_{name.upper()}"] = str(value)
        env["FT_TRAINER_DATA_DIR"] = str(self.settings.data_dir.resolve())
        env.setdefault("HF_HUB_OFFLINE", "1")
        return env


def _last_error_line(log_tail: str) -> str:
    lines = [line for line in log_tail.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors or lines or [""])[-1][:500]


def main() -> None:
    settings = TrainerSettings()
    configure_logging("trainer", settings.log_level)
    worker = Worker(settings)

    def stop(signum: int, _frame: object) -> None:
        worker.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run_forever()


if __name__ == "__main__":
    main()
