"""A training job as a run on the team's own MLflow tracking server (FT_TRAINER_MLFLOW_TRACKING_URI).

The job process opens the job's run, logs the hyperparameters it trains with, lineage tags and every
training step's and validation's metrics. A job is one run for its whole life: an attempt that resumes
after its process was killed finds the run again by its job-id tag and logs only steps the run does not
hold yet (a resume repeats the steps after the last checkpoint). The worker, which decides the job's
outcome, ends the run FINISHED, FAILED or KILLED; a paused job's run stays RUNNING until it resumes.

The server is the team's, not the platform's: every request is bounded (MLflow's own timeout and retry
variables, set from the settings), nothing here raises, and the first error stops the job's tracking with
one warning while training goes on. Metrics go out from a thread of their own, so a step never waits for
the server (a local one takes tens of milliseconds a request).
"""

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from services.trainer.config import TrainerSettings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

PLATFORM = "finetune-platform"
JOB_ID_TAG = "finetune.job_id"
# One metric per event kind whose history says how far a run already got.
TRAIN_PROGRESS_METRIC = "loss"
VALIDATION_PROGRESS_METRIC = "validation_loss"
# Step events carry these for the job's own progress display; they are not measurements of the run.
NOT_LOGGED = {"step", "total_steps", "eta_seconds"}
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


def tracking_enabled(settings: TrainerSettings) -> bool:
    return bool(settings.mlflow_tracking_uri)


def flat_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: dotted keys, lists joined by commas, None as an empty string."""
    params: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            params.update(flat_params(value, f"{name}."))
        elif isinstance(value, list | tuple):
            params[name] = ",".join(str(item) for item in value)
        else:
            params[name] = "" if value is None else str(value)
    return params


def _client(settings: TrainerSettings) -> "MlflowClient":
    # MLflow's client reads its HTTP limits only from these variables; its defaults (120 s, 7 retries with
    # backoff) would hold a training step for minutes when the server is down.
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(settings.mlflow_timeout_seconds)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.mlflow_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def _job_run_id(client: "MlflowClient", experiment_id: str, job_id: str) -> str | None:
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{JOB_ID_TAG}` = '{job_id}'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def _experiment_id(client: "MlflowClient", name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, tags={"finetune.platform": PLATFORM})
    except MlflowException:
        # Another job created it meanwhile.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _last_step(client: "MlflowClient", run_id: str, metric: str) -> int:
    return max((m.step for m in client.get_metric_history(run_id, metric)), default=0)


class JobRun:
    """The job process's side. No method raises: after the first error from MLflow it stops trying and
    `warn` (the job's event log) says so once."""

    def __init__(self, settings: TrainerSettings, job_id: str, warn: Callable[[str], None]) -> None:
        self.settings = settings
        self.job_id = job_id
        self._warn = warn
        self._client: MlflowClient | None = None
        self.run_id: str | None = None
        self._logged_through = {TRAIN_PROGRESS_METRIC: 0, VALIDATION_PROGRESS_METRIC: 0}
        self._outbox: queue.Queue[tuple[int, dict[str, float]] | None] = queue.Queue()
        self._sender = threading.Thread(target=self._send, name="mlflow-sender", daemon=True)

    def start(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        """Opens the job's run: the one an earlier attempt created, or a new one with params and tags."""
        self._guarded("opening the run", lambda: self._start(run_name, params, tags))
        if self._client is not None:
            self._sender.start()

    def _start(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        client = _client(self.settings)
        experiment_id = _experiment_id(client, self.settings.mlflow_experiment_name)
        run_id = _job_run_id(client, experiment_id, self.job_id)
        if run_id is None:
            run = client.create_run(
                experiment_id,
                run_name=run_name,
                tags={**tags, JOB_ID_TAG: self.job_id, "finetune.platform": PLATFORM},
            )
            run_id = run.info.run_id
            client.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])
        else:
            client.update_run(run_id, status="RUNNING")
            for metric in self._logged_through:
                self._logged_through[metric] = _last_step(client, run_id, metric)
        self._client, self.run_id = client, run_id

    def log_train_step(self, metrics: Mapping[str, float]) -> None:
        self._log(TRAIN_PROGRESS_METRIC, metrics)

    def log_validation(self, metrics: Mapping[str, float]) -> None:
        self._log(VALIDATION_PROGRESS_METRIC, metrics)

    def _log(self, progress_metric: str, metrics: Mapping[str, float]) -> None:
        step = int(metrics["step"])
        if self._client is None or step <= self._logged_through[progress_metric]:
            return
        self._logged_through[progress_metric] = step
        self._outbox.put((step, dict(metrics)))

    def _send(self) -> None:
        while (item := self._outbox.get()) is not None:
            if self._client is not None:
                self._guarded("logging metrics", lambda item=item: self._log_batch(*item))

    def close(self) -> None:
        """Sends what is still queued before the process ends, waiting no longer than one request may take."""
        if not self._sender.is_alive():
            return
        self._outbox.put(None)
        self._sender.join(self.settings.mlflow_timeout_seconds * (self.settings.mlflow_max_retries + 1) + 5)
        if self._sender.is_alive():
            self._client = None
            self._warn(f"MLflow: {self._outbox.qsize()} steps' metrics were not sent in time; dropped")

    def _log_batch(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        assert self._client is not None and self.run_id is not None
        now = int(time.time() * 1000)
        logged = [Metric(k, float(v), now, step) for k, v in metrics.items() if k not in NOT_LOGGED]
        self._client.log_batch(self.run_id, metrics=logged)

    def _guarded(self, action: str, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as error:  # noqa: BLE001 -- whatever the team's server or its client raises
            self._client = None
            message = (
                f"MLflow tracking stopped for this job ({action} failed: {_brief(error)}); training goes on"
            )
            logger.warning(message, extra={"fields": {"job_id": self.job_id}})
            self._warn(message)


def end_job_run(settings: TrainerSettings, job_id: str, status: str) -> str | None:
    """Ends the job's run with its outcome (the worker's side). Returns a warning when that failed; a job
    whose run was never created (the server was down) has nothing to end."""
    try:
        client = _client(settings)
        experiment = client.get_experiment_by_name(settings.mlflow_experiment_name)
        run_id = _job_run_id(client, experiment.experiment_id, job_id) if experiment else None
        if run_id is not None:
            client.set_terminated(run_id, status)
        return None
    except Exception as error:  # noqa: BLE001 -- the job's outcome stands whatever MLflow says
        message = f"MLflow: could not mark the job's run {status} ({_brief(error)})"
        logger.warning(message, extra={"fields": {"job_id": job_id}})
        return message


def _brief(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
