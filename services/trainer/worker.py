"""A training worker: `python -m services.trainer.worker`. Run as many as there are machines or GPUs.

The shared job runtime (ftcommon.job_runtime) claims, heartbeats, requeues jobs whose worker was lost
(they resume from their last checkpoint) and writes outcomes; this module only runs each job in a child
process (torchrun when the job wants several processes) and terminates it on cancel, on a lost lease or
on shutdown. A crashing job cannot take the gRPC server or the worker down; a killed worker takes its
child with it (parent-death signal), so a requeued job never runs twice.
"""

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ftcommon.db import Database
from ftcommon.hardware import sharing_thread_environment, thread_count
from ftcommon.job_runtime import Finished, JobContext, JobFailed, JobRuntime, JobStopped
from ftcommon.jobs import Job
from ftcommon.logs import configure_logging
from services.trainer import tables
from services.trainer.config import TrainerSettings
from services.trainer.job_queue import EXIT_STOPPED, JOB_KIND, RESULT_FILE, job_store, job_work_dir
from services.trainer.job_spec import stored_spec
from services.trainer.mlflow_tracking import FAILED, FINISHED, KILLED, end_job_run, tracking_enabled

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
LOG_TAIL_CHARS = 2000


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM when the worker dies, even by SIGKILL. (The
    signal follows the spawning thread, a runtime worker thread that waits for the child to its end.)"""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def child_command(job: Job, worker_id: str) -> list[str]:
    processes = stored_spec(job.payload).hyperparameters.num_processes
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


class TrainingSupervisor:
    """The trainer's runner on the shared job runtime: runs a job in a child process and watches it."""

    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings

    def __call__(self, context: JobContext) -> Finished:
        if not tracking_enabled(self.settings):
            return self._run(context)
        # The job's MLflow run ends with the outcome decided here; a paused job's, or one whose worker stops
        # (the job is queued again), stays open for the attempt that resumes it.
        try:
            finished = self._run(context)
        except JobStopped:
            if context.cancel_requested():
                self._end_mlflow_run(context, KILLED)
            raise
        except Exception:
            self._end_mlflow_run(context, FAILED)
            raise
        self._end_mlflow_run(context, KILLED if context.cancel_requested() else FINISHED)
        return finished

    def _end_mlflow_run(self, context: JobContext, status: str) -> None:
        warning = end_job_run(self.settings, context.job.id, status)
        if warning is not None:
            context.log(warning)

    def _run(self, context: JobContext) -> Finished:
        job = context.job
        work_dir = job_work_dir(self.settings, job.id)
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / RESULT_FILE).unlink(missing_ok=True)
        log_path = work_dir / f"attempt-{job.attempt}.log"
        with open(log_path, "wb") as log:
            child = subprocess.Popen(
                child_command(job, context.worker_id),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._child_env(),
                cwd=Path(__file__).resolve().parents[2],
                start_new_session=True,  # its own process group: cancel stops torchrun and its ranks
                preexec_fn=_die_with_parent,
            )
        context.log(f"attempt {job.attempt}: job process pid {child.pid}")
        self._supervise(context, child)
        result_path = work_dir / RESULT_FILE
        if child.returncode == 0 and result_path.exists():
            return Finished(json.loads(result_path.read_text()))
        if child.returncode == EXIT_STOPPED:
            # It stopped because the job stopped being ours or was cancelled; the runtime settles which.
            raise JobStopped()
        tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        logger.error("job process failed", extra={"fields": {"job_id": job.id, "log_tail": tail}})
        raise JobFailed(_last_error_line(tail) or f"job process exited with status {child.returncode}")

    def _supervise(self, context: JobContext, child: subprocess.Popen) -> None:
        """Waits for the child; stops it (and raises JobStopped) when the job is cancelled, taken over by
        another worker (we looked dead), or this worker shuts down."""
        while True:
            try:
                child.wait(timeout=self.settings.jobs.heartbeat_seconds)
                return
            except subprocess.TimeoutExpired:
                pass
            if not context.keep_going():
                self._terminate(child)
                raise JobStopped()

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
        # Threads sized to this host's usable CPUs that sleep when they wait: two jobs on one host then share
        # it instead of spinning against each other. An operator's own OMP_* settings win.
        for name, value in sharing_thread_environment(thread_count(self.settings.torch_threads)).items():
            env.setdefault(name, value)
        return env


def _last_error_line(log_tail: str) -> str:
    lines = [line for line in log_tail.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors or lines or [""])[-1][:500]


def main() -> None:
    settings = TrainerSettings()
    configure_logging("trainer", settings.log_level)
    db = Database(settings.resolved_database_url("trainer"), tables.metadata, tables.MIGRATIONS)
    db.migrate()
    runtime = JobRuntime(job_store(db), JOB_KIND, TrainingSupervisor(settings), settings.jobs)
    stop_requested = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runtime.start()
    logger.info("worker started")
    while not stop_requested.wait(1.0):
        pass
    # A running job's child gets cancel_grace_seconds to stop; the job then goes back to the queue.
    runtime.stop(timeout=settings.cancel_grace_seconds + settings.jobs.heartbeat_seconds + 5)


if __name__ == "__main__":
    main()
