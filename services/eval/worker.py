"""Eval runs on the shared job runtime, in the eval service's process.

A run whose worker died (process killed, host lost) is requeued and runs again from the start: greedy
decoding and a seeded bootstrap make the rerun give the same report. A run that has already used
`max_attempts` fails instead of looping forever, so none stays stuck in running.
"""

from ftcommon.job_runtime import Finished, JobContext, JobRuntime
from ftcommon.jobs import JobStore
from services.eval.config import EvalSettings
from services.eval.runner import RunExecutor

KIND = "eval"


def eval_runtime(settings: EvalSettings, store: JobStore, executor: RunExecutor) -> JobRuntime:
    def evaluate(context: JobContext) -> Finished:
        report = executor.execute(context.job.id, context.job.payload, context.keep_going)
        return Finished(report, message="report ready")

    return JobRuntime(store, KIND, evaluate, settings.jobs)
