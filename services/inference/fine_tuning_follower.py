"""Moves OpenAI fine-tuning jobs along: validate the files, prepare them (DataService), train (TrainerService),
then name the merged model `ft:<base>:<suffix>:<job id>` with a registry alias so chat can use it.

One thread per unfinished job follows the prepare and training jobs' event streams (blocking gRPC
iterators, each call with a deadline) and writes OpenAI-style events and status into the gateway's own
tables. Every step is safe to repeat: the training job is created with the OpenAI job id as idempotency key
and training events are recorded with their source index, so a restarted gateway resumes each job where
its records stop.
"""

import json
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta

import grpc

from finetune.v1 import common_pb2, data_pb2, data_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from ftcommon.errors import ServiceError, Unavailable, describe_rpc_error
from ftcommon.logs import log_fields
from ftcommon.specs.prepare import PrepareSpec, SplitFractions
from ftcommon.specs.proto_bridge import validate_spec
from ftcommon.specs.train import TrainSpec
from services.inference.config import InferenceSettings
from services.inference.fine_tuning_protocol import DpoHyperparameters, Hyperparameters
from services.inference.fine_tuning_results import ResultFiles
from services.inference.fine_tuning_store import FineTuningRecords, JobRecord, NewEvent
from services.inference.peer_errors import peer_error

logger = logging.getLogger(__name__)

_WATCH_SECONDS = 300.0
_SUCCEEDED, _FAILED, _CANCELLED, _RUNNING = (
    common_pb2.JOB_STATE_SUCCEEDED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
    common_pb2.JOB_STATE_RUNNING,
)
# A file's schemas that hold preference pairs: what method dpo trains on, and only it.
_PREFERENCE_SCHEMAS = (data_pb2.DATASET_SCHEMA_PREFERENCE, data_pb2.DATASET_SCHEMA_OPENAI_PREFERENCE)
# The training job's states that are not ends, as OpenAI names them (queued again: resumed or requeued).
_OPENAI_STATUS = {
    common_pb2.JOB_STATE_QUEUED: "queued",
    common_pb2.JOB_STATE_RUNNING: "running",
    common_pb2.JOB_STATE_PAUSED: "paused",
}


class JobFailed(Exception):
    """Ends a job as failed with OpenAI's error object."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


class FineTuningFollower:
    def __init__(
        self,
        settings: InferenceSettings,
        records: FineTuningRecords,
        data: data_pb2_grpc.DataServiceStub,
        trainer: trainer_pb2_grpc.TrainerServiceStub,
        results: ResultFiles,
    ) -> None:
        self.settings = settings
        self.records = records
        self.data = data
        self.trainer = trainer
        self.results = results
        self._stopping = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._calls: set[grpc.Call] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Resumes every job a previous gateway left unfinished."""
        for job in self.records.unfinished_jobs():
            self.follow(job.id)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for call in list(self._calls):
                call.cancel()
        for thread in list(self._threads.values()):
            thread.join(timeout=5)

    def follow(self, job_id: str) -> None:
        with self._lock:
            if self._stopping.is_set() or (job_id in self._threads and self._threads[job_id].is_alive()):
                return
            thread = threading.Thread(target=self._run, args=(job_id,), name=f"follow-{job_id}", daemon=True)
            self._threads[job_id] = thread
        thread.start()

    # One job

    def _run(self, job_id: str) -> None:
        while not self._stopping.is_set():
            job = self.records.get_job(None, job_id)
            if job.terminal:
                return
            try:
                self._advance(job)
            except JobFailed as failure:
                self.gateway_event(job_id, failure.error["message"], level="error")
                self.records.update_job(job_id, status="failed", error=failure.error)
            except (grpc.RpcError, ServiceError) as err:
                if self._stopping.is_set():
                    return
                reason = describe_rpc_error(err) if isinstance(err, grpc.RpcError) else err.message
                log_fields(
                    logger, logging.WARNING, "fine-tuning job follow interrupted", job=job_id, reason=reason
                )
                self._stopping.wait(self.settings.fine_tuning_poll_seconds)
            except Exception:
                logger.exception("following fine-tuning job %s failed; retrying", job_id)
                self._stopping.wait(self.settings.fine_tuning_poll_seconds)

    def _advance(self, job: JobRecord) -> None:
        if not job.prepare_job_id:
            self._validate_files(job)
            self._prepare(job)
        elif not job.train_job_id:
            version = self._wait_for_prepare(job)
            if version is not None:
                self._create_training(job, version)
        else:
            self._follow_training(job)

    def _validate_files(self, job: JobRecord) -> None:
        self.gateway_event(job.id, f"Validating training file: {job.training_file}")
        files = [("training_file", job.training_file)]
        if job.validation_file:
            self.gateway_event(job.id, f"Validating validation file: {job.validation_file}")
            files.append(("validation_file", job.validation_file))
        for param, file_id in files:
            dataset_id = self.records.get_file(job.project, file_id, param).dataset_id
            report = self.data.GetValidationReport(
                data_pb2.GetDatasetRequest(id=dataset_id), timeout=self.settings.rpc_timeout_seconds
            )
            if report.rejected:
                first = report.rejected[0]
                where = f" ({first.field})" if first.field else ""
                more = (
                    f"; {len(report.rejected) - 1} more line(s) rejected" if len(report.rejected) > 1 else ""
                )
                raise JobFailed(
                    f"invalid_{param}",
                    f"The job failed due to an invalid {param.replace('_', ' ')} {file_id}: "
                    f"line {first.line}{where}: {first.reason}{more}.",
                    param,
                )
            _check_format_fits_method(job, param, file_id, report.schema in _PREFERENCE_SCHEMAS)

    def _prepare(self, job: JobRecord) -> None:
        training = self.records.get_file(job.project, job.training_file, "training_file")
        validation_dataset_id = ""
        if job.validation_file:
            validation = self.records.get_file(job.project, job.validation_file, "validation_file")
            validation_dataset_id = validation.dataset_id
        # OpenAI trains on the whole training file; its validation file, when given, is the validation split.
        request = PrepareSpec(
            dataset_id=training.dataset_id,
            base_model=job.model,
            seed=job.seed,
            split=SplitFractions(train=1.0),
            validation_dataset_id=validation_dataset_id,
        ).to_request()
        try:
            prepare = self.data.PrepareDataset(request, timeout=self.settings.rpc_timeout_seconds)
        except grpc.RpcError as err:
            error = peer_error(err, "data service")
            if isinstance(error, Unavailable):
                raise error from None
            raise JobFailed(
                "invalid_training_file",
                f"The training file cannot be prepared: {error.message}",
                "training_file",
            ) from None
        self.records.update_job(job.id, prepare_job_id=prepare.status.id)

    def _wait_for_prepare(self, job: JobRecord) -> data_pb2.PreparedVersion | None:
        request = common_pb2.WatchRequest(id=job.prepare_job_id)
        self._drain(self.data.WatchPrepareJob(request, timeout=_WATCH_SECONDS))
        prepare = self.data.GetPrepareJob(
            data_pb2.GetPrepareJobRequest(id=job.prepare_job_id), timeout=self.settings.rpc_timeout_seconds
        )
        state = prepare.status.state
        if state == _FAILED:
            raise JobFailed(
                "invalid_training_file",
                f"The training file could not be prepared for {job.model}: {prepare.status.error}",
                "training_file",
            )
        if state == _CANCELLED:
            self.records.update_job(job.id, status="cancelled")
            return None
        if state != _SUCCEEDED:
            return None  # the watch ended at its deadline: follow again
        return self.data.GetPreparedVersion(
            data_pb2.GetPreparedVersionRequest(id=prepare.prepared_version_id),
            timeout=self.settings.rpc_timeout_seconds,
        )

    def _create_training(self, job: JobRecord, version: data_pb2.PreparedVersion) -> None:
        if self.records.get_job(None, job.id).terminal:  # cancelled while preparing
            return
        training = self.trainer.CreateJob(
            self._training_request(job, version), timeout=self.settings.rpc_timeout_seconds
        )
        effective = training.hyperparameters
        multiplier = effective.learning_rate / self.settings.fine_tuning_base_learning_rate
        hyperparameters = {
            "n_epochs": int(effective.epochs)
            if effective.epochs == int(effective.epochs)
            else effective.epochs,
            "batch_size": effective.batch_size,
            "learning_rate_multiplier": round(multiplier, 6),
        }
        if job.method == "dpo":
            hyperparameters["beta"] = effective.dpo_beta
        self.records.update_job(
            job.id,
            train_job_id=training.status.id,
            status="queued",
            hyperparameters=json.dumps(hyperparameters),
        )
        if self.records.get_job(None, job.id).terminal:  # cancelled while the training job was created
            self.trainer.CancelJob(
                trainer_pb2.GetJobRequest(id=training.status.id), timeout=self.settings.rpc_timeout_seconds
            )
            return
        self.gateway_event(job.id, "Files validated, moving job to queued state")

    def _follow_training(self, job: JobRecord) -> None:
        after = self.records.last_source_index(job.id, "train")
        request = common_pb2.WatchRequest(id=job.train_job_id, after_index=after)
        self._drain(
            self.trainer.WatchJob(request, timeout=_WATCH_SECONDS), lambda e: self._on_train_event(job, e)
        )
        training = self.trainer.GetJob(
            trainer_pb2.GetJobRequest(id=job.train_job_id), timeout=self.settings.rpc_timeout_seconds
        )
        state = training.status.state
        if state == _SUCCEEDED:
            self._succeed(job, training)
        elif state == _FAILED:
            raise JobFailed("training_failed", f"Training failed: {training.status.error}", None)
        elif state == _CANCELLED:
            self.records.update_job(job.id, status="cancelled")

    def _on_train_event(self, job: JobRecord, event: common_pb2.JobEvent) -> None:
        translated = _translate(event)
        if event.kind == common_pb2.EVENT_KIND_STATE and event.state in _OPENAI_STATUS:
            self.records.update_job(job.id, status=_OPENAI_STATUS[event.state], estimated_finish=None)
        if event.kind == common_pb2.EVENT_KIND_TRAIN_STEP and "eta_seconds" in event.metrics:
            eta = timedelta(seconds=event.metrics["eta_seconds"])
            self.records.update_job(job.id, estimated_finish=event.time.ToDatetime() + eta)
        if translated is not None:
            self.records.add_event(job.id, translated)

    def _succeed(self, job: JobRecord, training: trainer_pb2.TrainingJob) -> None:
        if self.records.get_job(None, job.id).terminal:  # cancelled after the last step
            return
        name = fine_tuned_model_name(job)
        # The alias names the job's model (OpenAI's `fine_tuned_model`); it promotes nothing, so it goes past the
        # registry's evaluation gate by force, with the job as the reason in the alias history.
        self.trainer.SetAlias(
            trainer_pb2.SetAliasRequest(
                alias=name,
                model=training.merged_model_id,
                force=True,
                reason=f"the fine-tuned model of OpenAI fine-tuning job {job.id}",
                actor="gateway fine-tuning API",
            ),
            timeout=self.settings.rpc_timeout_seconds,
        )
        self._name_checkpoint_models(job, name)
        self.gateway_event(job.id, f"New fine-tuned model created: {name}")
        if not self.records.get_job(None, job.id).result_files:
            self.records.update_job(job.id, result_files=[self.results.write(job)])
        self.records.update_job(
            job.id,
            status="succeeded",
            estimated_finish=None,
            fine_tuned_model=name,
            merged_model_id=training.merged_model_id,
            trained_tokens=int(training.metrics.get("tokens_seen", 0)),
        )
        self.gateway_event(job.id, "The job has successfully completed")

    def _name_checkpoint_models(self, job: JobRecord, name: str) -> None:
        """The trainer merged the job's latest intermediate checkpoints into models; each gets its alias."""
        listed = self.trainer.ListCheckpoints(
            trainer_pb2.GetJobRequest(id=job.train_job_id), timeout=self.settings.rpc_timeout_seconds
        )
        for checkpoint in listed.checkpoints:
            if checkpoint.model_id:
                self.trainer.SetAlias(
                    trainer_pb2.SetAliasRequest(
                        alias=checkpoint_model_name(name, checkpoint.step),
                        model=checkpoint.model_id,
                        force=True,
                        reason=f"checkpoint at step {checkpoint.step} of OpenAI fine-tuning job {job.id}",
                        actor="gateway fine-tuning API",
                    ),
                    timeout=self.settings.rpc_timeout_seconds,
                )

    def _training_request(
        self, job: JobRecord, version: data_pb2.PreparedVersion
    ) -> trainer_pb2.CreateJobRequest:
        """The job as a TrainSpec: OpenAI's n_epochs, batch_size and learning_rate_multiplier onto its
        hyperparameters, and for DPO the method and its beta; "auto" leaves one to the trainer's defaults."""
        asked = Hyperparameters.model_validate(
            {k: v for k, v in job.hyperparameters.items() if k in Hyperparameters.model_fields}
        )
        hyperparameters: dict[str, float | int | str] = {"seed": job.seed}
        if job.method == "dpo":
            hyperparameters["method"] = "dpo"
            beta = DpoHyperparameters.model_validate(job.hyperparameters).beta
            if beta != "auto":
                hyperparameters["dpo_beta"] = float(beta)
        if asked.n_epochs != "auto":
            hyperparameters["epochs"] = float(asked.n_epochs)
        if asked.batch_size != "auto":
            hyperparameters["batch_size"] = asked.batch_size
        if asked.learning_rate_multiplier != "auto":
            hyperparameters["learning_rate"] = (
                asked.learning_rate_multiplier * self.settings.fine_tuning_base_learning_rate
            )
        spec = {
            "base_model": job.model,
            "prepared_version_id": version.id,
            "hyperparameters": hyperparameters,
            "idempotency_key": job.id,
            "display_name": job.id,
        }
        return validate_spec(TrainSpec, spec).to_request()

    # Helpers

    def gateway_event(self, job_id: str, message: str, level: str = "info") -> None:
        index = self.records.last_source_index(job_id, "gateway") + 1
        self.records.add_event(job_id, NewEvent("gateway", index, message, level=level))

    def _drain(
        self,
        stream: Iterable[common_pb2.JobEvent],
        on_event: Callable[[common_pb2.JobEvent], None] = lambda _: None,
    ) -> None:
        """Reads a watch stream to its end; its deadline ending it is no error (the caller looks again)."""
        call = stream if isinstance(stream, grpc.Call) else None
        if call is not None:
            with self._lock:
                self._calls.add(call)
        try:
            for event in stream:
                on_event(event)
        except grpc.RpcError as err:
            if not isinstance(err, grpc.Call) or err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        finally:
            if call is not None:
                with self._lock:
                    self._calls.discard(call)


def _check_format_fits_method(job: JobRecord, param: str, file_id: str, preference_pairs: bool) -> None:
    """DPO trains on preference pairs only, supervised fine-tuning on conversations only (as on OpenAI)."""
    if job.method == "dpo" and not preference_pairs:
        raise JobFailed(
            f"invalid_{param}",
            f"The job failed due to an invalid {param.replace('_', ' ')} {file_id}: method dpo needs "
            "OpenAI's preference format (input.messages, preferred_output, non_preferred_output on every "
            "line); this file is in the chat format (messages).",
            param,
        )
    if job.method == "supervised" and preference_pairs:
        raise JobFailed(
            f"invalid_{param}",
            f"The job failed due to an invalid {param.replace('_', ' ')} {file_id}: it holds preference "
            "pairs (input, preferred_output, non_preferred_output), which train with method dpo; "
            "supervised fine-tuning needs the chat format (messages).",
            param,
        )


def fine_tuned_model_name(job: JobRecord) -> str:
    return f"ft:{job.model}:{job.suffix or ''}:{job.id}"


def checkpoint_model_name(fine_tuned_model: str, step: int) -> str:
    """OpenAI's name for an intermediate checkpoint's model, a registry alias like the job's own."""
    return f"{fine_tuned_model}:ckpt-step-{step}"


def _translate(event: common_pb2.JobEvent) -> NewEvent | None:
    """A training event as OpenAI would list it, or None for those it has no counterpart for."""
    metrics = dict(event.metrics)
    if event.kind == common_pb2.EVENT_KIND_TRAIN_STEP:
        step, total = int(metrics.get("step", 0)), int(metrics.get("total_steps", 0))
        data = {
            "step": step,
            "total_steps": total,
            "train_loss": metrics.get("loss", 0.0),
            "learning_rate": metrics.get("learning_rate", 0.0),
            "tokens_per_second": metrics.get("tokens_per_second", 0.0),
        }
        if "mean_token_accuracy" in metrics:
            data["train_mean_token_accuracy"] = metrics["mean_token_accuracy"]
        message = f"Step {step}/{total}: training loss={data['train_loss']:.4f}"
        return NewEvent("train", event.index, message, type="metrics", data=data)
    if event.kind == common_pb2.EVENT_KIND_VALIDATION:
        step = int(metrics.get("step", 0))
        data = {"step": step, "valid_loss": metrics.get("validation_loss", 0.0)}
        if "validation_mean_token_accuracy" in metrics:
            data["valid_mean_token_accuracy"] = metrics["validation_mean_token_accuracy"]
        message = f"Step {step}: validation loss={data['valid_loss']:.4f}"
        return NewEvent("train", event.index, message, type="metrics", data=data)
    if event.kind == common_pb2.EVENT_KIND_CHECKPOINT:
        return NewEvent("train", event.index, f"Checkpoint created at step {int(metrics.get('step', 0))}")
    if event.kind == common_pb2.EVENT_KIND_STATE:
        if event.state == _RUNNING:
            return NewEvent("train", event.index, "Fine-tuning job started")
        if event.state == _FAILED:
            return NewEvent("train", event.index, f"Training failed: {event.message}", level="error")
        if event.state == _CANCELLED:
            return NewEvent("train", event.index, "Fine-tuning job cancelled")
        if event.state == common_pb2.JOB_STATE_PAUSED:
            return NewEvent("train", event.index, "Fine-tuning job paused at a checkpoint")
        if event.state == common_pb2.JOB_STATE_QUEUED and event.message == "resumed":
            return NewEvent("train", event.index, "Fine-tuning job resumed; it continues from its checkpoint")
        if event.state == common_pb2.JOB_STATE_QUEUED and event.index > 1:
            message = (
                f"The training job was requeued ({event.message}); it continues from its last checkpoint"
            )
            return NewEvent("train", event.index, message, level="warn")
        return None
    if event.kind == common_pb2.EVENT_KIND_LOG and event.message:
        return NewEvent("train", event.index, event.message)
    return None
