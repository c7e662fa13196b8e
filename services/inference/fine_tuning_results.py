"""A fine-tuning job's result file: its training metrics as a CSV in the columns of OpenAI's result file,
stored as an artifact and listed among the project's files (purpose `fine-tune-results`)."""

import csv
import io

from ftcommon.artifacts import ArtifactStore
from services.inference.fine_tuning_store import EventRecord, FineTuningRecords, JobRecord

RESULTS_PURPOSE = "fine-tune-results"
# OpenAI's columns; a value the trainer did not measure at a step (validation runs every few steps) is empty.
COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
# Where each column's value is in the job's metrics events.
_EVENT_FIELDS = {"train_accuracy": "train_mean_token_accuracy"}


def metrics_by_step(events: list[EventRecord]) -> dict[int, dict[str, float]]:
    """Each step's train and validation metrics; a step trained again after a resume keeps its last values
    (they are the same: the trainer resumes exactly)."""
    steps: dict[int, dict[str, float]] = {}
    for event in events:
        data = event.data or {}
        if "step" not in data:
            continue
        row = steps.setdefault(int(data["step"]), {})
        for name in ("train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"):
            if name in data:
                row[name] = float(data[name])
    return steps


class ResultFiles:
    def __init__(self, records: FineTuningRecords, store: ArtifactStore) -> None:
        self.records = records
        self.store = store

    def write(self, job: JobRecord) -> str:
        """Stores the job's metrics CSV and records it as a file of the job's project; returns its id."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for step, row in sorted(metrics_by_step(self.records.metrics_events(job.id)).items()):
            writer.writerow([step, *(row.get(_EVENT_FIELDS.get(c, c), "") for c in COLUMNS[1:])])
        content = buffer.getvalue().encode()
        artifact = self.store.put_bytes(content)
        record = self.records.add_file(
            job.project, "", "step_metrics.csv", RESULTS_PURPOSE, len(content), artifact_uri=artifact.uri
        )
        return record.id
