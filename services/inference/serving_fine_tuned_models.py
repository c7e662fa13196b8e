"""The fine-tuned models of a project as /v1/models lists them (`ft:<base>:<suffix>:<job id>`), and their
deletion through the model registry."""

import grpc

from finetune.v1 import registry_pb2, registry_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from ftcommon.errors import FailedPrecondition, NotFound
from services.inference.config import InferenceSettings
from services.inference.fine_tuning_follower import checkpoint_model_name
from services.inference.fine_tuning_store import FineTuningRecords, JobRecord, epoch_seconds
from services.inference.peer_errors import peer_error
from services.inference.protocol import ModelCard

_ACTOR = "gateway fine-tuning API"


class FineTunedModels:
    def __init__(
        self,
        settings: InferenceSettings,
        records: FineTuningRecords,
        registry: registry_pb2_grpc.RegistryServiceStub,
        trainer: trainer_pb2_grpc.TrainerServiceStub,
    ) -> None:
        self.settings = settings
        self.records = records
        self.registry = registry
        self.trainer = trainer

    def cards(self, project: str) -> list[ModelCard]:
        return [_card(job) for job in self.records.fine_tuned_models(project)]

    def card(self, project: str, model: str) -> ModelCard:
        return _card(self._job(project, model))

    def delete(self, project: str, model: str) -> str:
        """Deletes the job's merged model (with its `ft:` alias), its adapter and its checkpoints' models
        from the registry; the registry refuses while another alias (such as `prod`) points at one. Returns the registry id
        of the deleted model, for the gateway to stop serving it."""
        job = self._job(project, model)
        reason = f"DELETE /v1/models/{model} (project {project or '-'})"
        merged_model_id = job.merged_model_id or ""
        self._delete(merged_model_id, [model], reason)
        if job.train_job_id:
            adapter_model_id = self._training(job.train_job_id).adapter_model_id
            if adapter_model_id:
                self._delete(adapter_model_id, [], reason)
            for checkpoint in self._checkpoints(job.train_job_id):
                if checkpoint.model_id:
                    self._delete(checkpoint.model_id, [checkpoint_model_name(model, checkpoint.step)], reason)
        self.records.forget_model(job.id)
        return merged_model_id

    def _job(self, project: str, model: str) -> JobRecord:
        job = self.records.job_for_model(project, model)
        if job is None:
            raise NotFound(f"The model '{model}' does not exist or is not a fine-tuned model", field="model")
        return job

    def _delete(self, model_id: str, aliases: list[str], reason: str) -> None:
        """A model already gone (a retried delete) is no obstacle."""
        try:
            self.registry.DeleteModel(
                registry_pb2.DeleteModelRequest(
                    model=model_id, with_aliases=aliases, reason=reason, actor=_ACTOR
                ),
                timeout=self.settings.rpc_timeout_seconds,
            )
        except grpc.RpcError as err:
            error = peer_error(err, "model registry")
            if isinstance(error, FailedPrecondition):
                raise FailedPrecondition(
                    f"The model cannot be deleted: {error.message}", field="model"
                ) from None
            if not isinstance(error, NotFound):
                raise error from None

    def _checkpoints(self, train_job_id: str) -> list[trainer_pb2.Checkpoint]:
        try:
            return list(
                self.trainer.ListCheckpoints(
                    trainer_pb2.GetJobRequest(id=train_job_id), timeout=self.settings.rpc_timeout_seconds
                ).checkpoints
            )
        except grpc.RpcError as err:
            raise peer_error(err, "trainer") from None

    def _training(self, train_job_id: str) -> trainer_pb2.TrainingJob:
        try:
            return self.trainer.GetJob(
                trainer_pb2.GetJobRequest(id=train_job_id), timeout=self.settings.rpc_timeout_seconds
            )
        except grpc.RpcError as err:
            raise peer_error(err, "trainer") from None


def _card(job: JobRecord) -> ModelCard:
    return ModelCard(
        id=job.fine_tuned_model or "",
        created=epoch_seconds(job.finished_at) or 0,
        owned_by=job.project or "finetune-platform",
        root=job.merged_model_id or "",
        max_model_len=None,
    )
