"""The fine-tuned models of a project as /v1/models lists them (`ft:<base>:<suffix>:<job id>`)."""

from ftcommon.errors import NotFound
from services.inference.fine_tuning_store import FineTuningRecords, JobRecord, epoch_seconds
from services.inference.protocol import ModelCard


class FineTunedModels:
    def __init__(self, records: FineTuningRecords) -> None:
        self.records = records

    def cards(self, project: str) -> list[ModelCard]:
        return [_card(job) for job in self.records.fine_tuned_models(project)]

    def card(self, project: str, model: str) -> ModelCard:
        job = self.records.job_for_model(project, model)
        if job is None:
            raise NotFound(f"The model '{model}' does not exist", field="model")
        return _card(job)


def _card(job: JobRecord) -> ModelCard:
    return ModelCard(
        id=job.fine_tuned_model or "",
        created=epoch_seconds(job.finished_at) or 0,
        owned_by=job.project or "finetune-platform",
        root=job.merged_model_id or "",
        max_model_len=None,
    )
