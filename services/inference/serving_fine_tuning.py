"""/v1/fine_tuning/jobs: OpenAI fine-tuning jobs over the data service (prepare) and the trainer (train).

Requests are checked here and recorded in the gateway's tables; FineTuningFollower does the work behind
them. OpenAI's hyperparameters map onto the trainer's typed spec: "auto" (or absent) leaves a field unset,
so the trainer's size-aware defaults apply; learning_rate_multiplier scales the trainer's default LoRA
learning rate. method.type "dpo" trains the spec's method dpo (beta -> dpo_beta) on a file of OpenAI's
preference pairs.
"""

import secrets
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import grpc

from finetune.v1 import common_pb2, data_pb2, trainer_pb2, trainer_pb2_grpc
from ftcommon.db import utcnow
from ftcommon.errors import FailedPrecondition, InvalidArgument, NotFound
from services.inference.config import InferenceSettings
from services.inference.fine_tuning_follower import FineTuningFollower, checkpoint_model_name
from services.inference.fine_tuning_protocol import (
    Checkpoint,
    CheckpointList,
    CheckpointMetrics,
    DpoHyperparameters,
    DpoMethod,
    EventList,
    FineTuningJob,
    Hyperparameters,
    JobCreateRequest,
    JobError,
    JobEvent,
    JobList,
    MethodView,
    SupervisedMethod,
)
from services.inference.fine_tuning_results import metrics_by_step
from services.inference.fine_tuning_store import FineTuningRecords, JobRecord, NewEvent, epoch_seconds
from services.inference.peer_errors import peer_error

MAX_LIST_LIMIT = 100
Reply = TypeVar("Reply")


class OpenAIServingFineTuning:
    def __init__(
        self,
        settings: InferenceSettings,
        records: FineTuningRecords,
        trainer: trainer_pb2_grpc.TrainerServiceStub,
        follower: FineTuningFollower,
    ) -> None:
        self.settings = settings
        self.records = records
        self.trainer = trainer
        self.follower = follower

    def create(self, project: str, request: JobCreateRequest) -> FineTuningJob:
        method, hyperparameters = _requested_method(request)
        if request.integrations:
            raise InvalidArgument(
                "integrations (Weights & Biases and others) are not supported on this platform: every job's "
                "events and metrics are in GET /v1/fine_tuning/jobs/{id}/events; leave integrations out",
                field="integrations",
            )
        self._check_base_model(request.model)
        for param, file_id in (
            ("training_file", request.training_file),
            ("validation_file", request.validation_file),
        ):
            if file_id and self.records.get_file(project, file_id, param).purpose != "fine-tune":
                raise InvalidArgument(f"{file_id} is not a file uploaded with purpose fine-tune", field=param)
        job = self.records.add_job(
            JobRecord(
                id=f"ftjob-{secrets.token_hex(12)}",
                project=project,
                model=request.model,
                training_file=request.training_file,
                validation_file=request.validation_file,
                suffix=request.suffix,
                seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
                metadata=request.metadata,
                hyperparameters=hyperparameters.model_dump(),
                status="validating_files",
                prepare_job_id=None,
                train_job_id=None,
                fine_tuned_model=None,
                merged_model_id=None,
                trained_tokens=None,
                error=None,
                cancel_requested=False,
                created_at=utcnow(),
                finished_at=None,
                method=method,
            )
        )
        self.records.add_event(job.id, NewEvent("gateway", 0, f"Created fine-tuning job: {job.id}"))
        self.follower.follow(job.id)
        return job_view(job)

    def list(self, project: str, after: str | None, limit: int, metadata: dict[str, str]) -> JobList:
        _check_limit(limit)
        jobs, has_more = self.records.list_jobs(project, after, limit, metadata)
        return JobList(data=[job_view(job) for job in jobs], has_more=has_more)

    def get(self, project: str, job_id: str) -> FineTuningJob:
        return job_view(self.records.get_job(project, job_id))

    def cancel(self, project: str, job_id: str) -> FineTuningJob:
        job = self.records.get_job(project, job_id)
        if job.terminal:
            raise FailedPrecondition(
                f"Job {job_id} has already {job.status}; only an unfinished job can be cancelled"
            )
        self.records.update_job(job.id, cancel_requested=1)
        self._cancel_work(job)
        self.follower.gateway_event(job.id, "Fine-tuning job cancelled")
        cancelled = self.records.update_job(job.id, status="cancelled")
        if cancelled.train_job_id and cancelled.train_job_id != job.train_job_id:
            self._cancel_work(cancelled)  # the follower started training while this cancel ran
        return job_view(cancelled)

    def _cancel_work(self, job: JobRecord) -> None:
        """Cancels the training job, or the prepare job before there is one. One that has already ended
        is no obstacle: the OpenAI job is cancelled all the same and nothing follows it."""
        try:
            if job.train_job_id:
                self.trainer.CancelJob(
                    trainer_pb2.GetJobRequest(id=job.train_job_id), timeout=self.settings.rpc_timeout_seconds
                )
            elif job.prepare_job_id:
                self.follower.data.CancelPrepareJob(
                    data_pb2.GetPrepareJobRequest(id=job.prepare_job_id),
                    timeout=self.settings.rpc_timeout_seconds,
                )
        except grpc.RpcError as err:
            error = peer_error(err, "trainer" if job.train_job_id else "data service")
            if not isinstance(error, FailedPrecondition | InvalidArgument):
                raise error from None

    def pause(self, project: str, job_id: str) -> FineTuningJob:
        """The trainer stops the job after its current step, with a checkpoint to resume from exactly; a job
        still queued pauses at once. The status is `pausing` until the trainer has stopped it, then
        `paused`."""
        job = self._trainable(project, job_id, "paused")
        training = self._call(self.trainer.PauseJob, job.train_job_id or "")
        if training.status.state == common_pb2.JOB_STATE_PAUSED:
            job = self.records.update_job(job.id, status="paused", estimated_finish=None)
        elif job.status not in ("paused", "pausing"):
            job = self.records.update_job(job.id, status="pausing", estimated_finish=None)
            self.follower.gateway_event(
                job.id, "Pause requested: the job stops with a checkpoint after its current step"
            )
        return job_view(job)

    def resume(self, project: str, job_id: str) -> FineTuningJob:
        """A paused job is queued again and continues from its checkpoint; a pause not yet taken is
        withdrawn."""
        job = self._trainable(project, job_id, "resumed")
        training = self._call(self.trainer.ResumeJob, job.train_job_id or "")
        if job.status == "paused" and training.status.state == common_pb2.JOB_STATE_QUEUED:
            job = self.records.update_job(job.id, status="queued")
        elif job.status == "pausing" and training.status.state == common_pb2.JOB_STATE_RUNNING:
            job = self.records.update_job(job.id, status="running")  # the pause was withdrawn in time
        return job_view(job)

    def _trainable(self, project: str, job_id: str, verb: str) -> JobRecord:
        job = self.records.get_job(project, job_id)
        if job.terminal:
            raise FailedPrecondition(
                f"Job {job_id} has already {job.status}; only a queued, running or paused job can be {verb}",
                field="fine_tuning_job_id",
            )
        if not job.train_job_id:
            raise FailedPrecondition(
                f"Job {job_id} is still validating its files; it can be {verb} once it is queued",
                field="fine_tuning_job_id",
            )
        return job

    def _call(self, method: Callable[..., Reply], train_job_id: str) -> Reply:
        try:
            return method(
                trainer_pb2.GetJobRequest(id=train_job_id), timeout=self.settings.rpc_timeout_seconds
            )
        except grpc.RpcError as err:
            raise peer_error(err, "trainer") from None

    def events(self, project: str, job_id: str, after: str | None, limit: int) -> EventList:
        _check_limit(limit)
        job = self.records.get_job(project, job_id)
        events, has_more = self.records.list_events(job.id, after, limit)
        return EventList(
            data=[
                JobEvent(
                    id=e.id,
                    created_at=epoch_seconds(e.created_at) or 0,
                    level=e.level,  # type: ignore[arg-type]
                    message=e.message,
                    data=e.data,
                    type=e.type,  # type: ignore[arg-type]
                )
                for e in events
            ],
            has_more=has_more,
        )

    def checkpoints(self, project: str, job_id: str, after: str | None, limit: int) -> CheckpointList:
        """The job's servable models, newest first: the final one, then the intermediate checkpoints the
        trainer merged into models (TrainerSettings.servable_checkpoints, the latest two by default)."""
        _check_limit(limit)
        job = self.records.get_job(project, job_id)
        if job.status != "succeeded" or not job.fine_tuned_model or not job.train_job_id:
            return CheckpointList(data=[], has_more=False)
        training = self._training(job.train_job_id)
        losses = metrics_by_step(self.records.metrics_events(job.id))
        prefix = f"ftckpt-{job.id.removeprefix('ftjob-')}"
        data = [
            _checkpoint(job, prefix, training.step, job.fine_tuned_model, job.finished_at, losses, training)
        ]
        listed = self._call(self.trainer.ListCheckpoints, job.train_job_id).checkpoints
        for kept in sorted((c for c in listed if c.model_id), key=lambda c: -c.step):
            name = checkpoint_model_name(job.fine_tuned_model, kept.step)
            created = kept.created_at.ToDatetime()
            data.append(_checkpoint(job, f"{prefix}-step-{kept.step}", kept.step, name, created, losses))
        if after:
            ids = [c.id for c in data]
            if after not in ids:
                raise NotFound(f"no checkpoint {after} in job {job_id}", field="after")
            data = data[ids.index(after) + 1 :]
        page = data[:limit]
        return CheckpointList(
            data=page,
            has_more=len(data) > limit,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
        )

    def _training(self, train_job_id: str) -> trainer_pb2.TrainingJob:
        return self._call(self.trainer.GetJob, train_job_id)

    def _check_base_model(self, model: str) -> None:
        try:
            record = self.trainer.GetModel(
                trainer_pb2.GetModelRequest(name=model), timeout=self.settings.rpc_timeout_seconds
            )
        except grpc.RpcError as err:
            error = peer_error(err, "trainer")
            if isinstance(error, NotFound | InvalidArgument):
                raise InvalidArgument(
                    f"The model '{model}' does not exist or cannot be fine-tuned; GET /v1/models lists them",
                    field="model",
                ) from None
            raise error from None
        if record.kind == trainer_pb2.MODEL_KIND_ADAPTER:
            raise InvalidArgument(
                f"'{model}' is a LoRA adapter; fine-tune a base or merged model instead", field="model"
            )


def _requested_method(request: JobCreateRequest) -> tuple[str, Hyperparameters | DpoHyperparameters]:
    """The method's type and its hyperparameters: method.<type>.hyperparameters, or the older top-level
    hyperparameters; both only if they agree."""
    method = request.method
    if method is not None and method.type not in ("supervised", "dpo"):
        raise InvalidArgument(
            f"method.type '{method.type}' is not supported: this platform trains 'supervised' and 'dpo'",
            field="method.type",
        )
    method_type = method.type if method is not None else "supervised"
    from_method: Hyperparameters | DpoHyperparameters | None = None
    if method is not None and method.supervised is not None and method_type == "supervised":
        from_method = method.supervised.hyperparameters
    if method is not None and method.dpo is not None and method_type == "dpo":
        from_method = method.dpo.hyperparameters
    top_level = request.hyperparameters
    if from_method is not None and top_level is not None and _shared(from_method) != top_level:
        raise InvalidArgument(
            f"differs from method.{method_type}.hyperparameters; give hyperparameters in one place",
            field="hyperparameters",
        )
    chosen = from_method or top_level or Hyperparameters()
    if method_type == "dpo" and not isinstance(chosen, DpoHyperparameters):
        chosen = DpoHyperparameters.model_validate(chosen.model_dump())  # beta "auto"
    return method_type, chosen


def _shared(hyperparameters: Hyperparameters | DpoHyperparameters) -> Hyperparameters:
    if isinstance(hyperparameters, DpoHyperparameters):
        return hyperparameters.shared()
    return hyperparameters


def _checkpoint(
    job: JobRecord,
    checkpoint_id: str,
    step: int,
    model: str,
    created: datetime | None,
    losses: dict[int, dict[str, float]],
    training: trainer_pb2.TrainingJob | None = None,
) -> Checkpoint:
    """Losses at the step from the job's metrics events; the final checkpoint falls back on the trainer's."""
    at_step = losses.get(step, {})
    final = training.metrics if training is not None else {}
    valid_loss = at_step.get("valid_loss", final.get("validation_loss"))
    valid_accuracy = at_step.get("valid_mean_token_accuracy")
    return Checkpoint(
        id=checkpoint_id,
        created_at=epoch_seconds(created) or 0,
        fine_tuned_model_checkpoint=model,
        fine_tuning_job_id=job.id,
        step_number=step,
        metrics=CheckpointMetrics(
            step=float(step),
            train_loss=at_step.get("train_loss", final.get("train_loss")),
            train_mean_token_accuracy=at_step.get("train_mean_token_accuracy"),
            valid_loss=valid_loss,
            valid_mean_token_accuracy=valid_accuracy,
            full_valid_loss=valid_loss,
            full_valid_mean_token_accuracy=valid_accuracy,
        ),
    )


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidArgument(f"must be between 1 and {MAX_LIST_LIMIT}", field="limit")


def job_view(job: JobRecord) -> FineTuningJob:
    if job.method == "dpo":
        dpo = DpoHyperparameters.model_validate(job.hyperparameters)
        hyperparameters = dpo.shared()
        method = MethodView(type="dpo", dpo=DpoMethod(hyperparameters=dpo))
    else:
        hyperparameters = Hyperparameters.model_validate(job.hyperparameters)
        method = MethodView(type="supervised", supervised=SupervisedMethod(hyperparameters=hyperparameters))
    return FineTuningJob(
        id=job.id,
        created_at=epoch_seconds(job.created_at) or 0,
        error=JobError(**job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model,
        finished_at=epoch_seconds(job.finished_at),
        hyperparameters=hyperparameters,
        model=job.model,
        organization_id=job.project,
        seed=job.seed,
        status=job.status,  # type: ignore[arg-type]
        trained_tokens=job.trained_tokens,
        estimated_finish=epoch_seconds(job.estimated_finish) if job.status == "running" else None,
        result_files=job.result_files,
        training_file=job.training_file,
        validation_file=job.validation_file,
        metadata=job.metadata,
        method=method,
        user_provided_suffix=job.suffix,
    )
