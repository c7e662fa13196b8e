"""Prepare jobs on the shared job runtime, in the data service's process.

Jobs are claimed from the database, so several replicas can share the queue. A job whose worker died
(its process was killed) is requeued by any other worker and runs again from the start: prepare is
deterministic and publishes its version only at the very end.
"""

from ftcommon.job_runtime import Finished, JobContext, JobRuntime
from ftcommon.jobs import JobStore
from services.data.config import DataSettings
from services.data.prepare import PrepareRunner

PREPARE_KIND = "prepare"


def prepare_runtime(jobs: JobStore, runner: PrepareRunner, settings: DataSettings) -> JobRuntime:
    def prepare(context: JobContext) -> Finished:
        record = runner.run(
            context.job.payload, progress=context.progress, stop_if_asked=context.stop_if_asked
        )
        return Finished({"prepared_version_id": record.id}, message=f"prepared {record.id}")

    return JobRuntime(jobs, PREPARE_KIND, prepare, settings.jobs)
