"""One training job in its own process: `python -m services.trainer.run_job JOB_ID WORKER_ID`.

The worker starts it (under torchrun when the job asks for several processes) and watches it; this
process resumes from the job's latest checkpoint, trains, reports events, and on success registers the
adapter and merged model and writes `result.json` for the worker. It never changes the job's state:
the worker owns the state machine.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from ftcommon.artifacts import ArtifactStore
from ftcommon.db import Database
from ftcommon.hardware import configure_torch_threads, thread_count
from ftcommon.jobs import EventKind, JobState, JobStore
from ftcommon.logs import configure_logging
from ftcommon.prepared_layout import PreparedFolder
from ftcommon.specs.train import TORCH_COMPILE_MIN_TOKENS
from services.trainer import tables
from services.trainer.checkpoint_models import export_checkpoint_models, kept_checkpoints
from services.trainer.checkpoints import latest_checkpoint, list_checkpoints, record_checkpoint
from services.trainer.config import TrainerSettings
from services.trainer.export import export
from services.trainer.job_queue import EXIT_STOPPED, RESULT_FILE, job_store, job_work_dir
from services.trainer.job_spec import stored_spec
from services.trainer.mlflow_tracking import JobRun, flat_params, tracking_enabled
from services.trainer.recipe import FinetuneRecipe, RecipeConfig, StopRequested
from services.trainer.registry import (
    ADAPTER,
    MERGED,
    ModelFolderInfo,
    ModelRegistry,
    checkpoint_model_name,
    inspect_model_folder,
    job_model_name,
)

logger = logging.getLogger(__name__)


def code_version() -> str:
    """The git commit of the running code when it is a checkout, else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        return f"git:{commit}"
    except (OSError, subprocess.SubprocessError):
        return f"finetune-platform=={metadata.version('finetune-platform')}"


class JobReporter:
    """Sends the recipe's progress to the job's durable event log and checkpoints to the artifact store."""

    def __init__(
        self, store: JobStore, db: Database, artifacts: ArtifactStore, job_id: str, worker_id: str
    ) -> None:
        self.store = store
        self.db = db
        self.artifacts = artifacts
        self.job_id = job_id
        self.worker_id = worker_id
        self.mlflow_run: JobRun | None = None  # set when the team's MLflow server gets the job's metrics too

    def on_train_step(self, metrics: dict[str, float]) -> None:
        progress = metrics["step"] / metrics["total_steps"]
        self.store.emit(self.job_id, EventKind.TRAIN_STEP, progress=progress, metrics=metrics)
        if self.mlflow_run is not None:
            self.mlflow_run.log_train_step(metrics)

    def on_validation(self, metrics: dict[str, float]) -> None:
        self.store.emit(self.job_id, EventKind.VALIDATION, metrics=metrics)
        if self.mlflow_run is not None:
            self.mlflow_run.log_validation(metrics)

    def on_checkpoint(self, step: int, folder: Path) -> None:
        artifact = self.artifacts.put_dir(folder, move_files=True)
        record = record_checkpoint(self.db, self.job_id, step, artifact)
        shutil.rmtree(folder, ignore_errors=True)
        self.store.emit(self.job_id, EventKind.CHECKPOINT, message=record.id, metrics={"step": float(step)})

    def should_stop(self) -> bool:
        """Between steps: stop when cancelled, no longer ours, or asked to pause."""
        return self.must_stop() or self.pause_requested()

    def must_stop(self) -> bool:
        """Cancelled or no longer this worker's; a pause asked once training is done is not honoured."""
        job = self.store.get(self.job_id)
        return job.cancel_requested or job.state != JobState.RUNNING or job.worker_id != self.worker_id

    def pause_requested(self) -> bool:
        return self.store.pause_requested(self.job_id)


def run(settings: TrainerSettings, job_id: str, worker_id: str) -> int:
    db = Database(settings.resolved_database_url("trainer"), tables.metadata, tables.MIGRATIONS)
    store = job_store(db)
    artifacts = ArtifactStore(settings.resolved_artifact_store_url())
    reporter = JobReporter(store, db, artifacts, job_id, worker_id)
    job = store.get(job_id)
    payload = job.payload
    hyperparameters = stored_spec(payload).hyperparameters
    prepared_dir = artifacts.local_dir(payload["prepared_uri"])
    work_dir = job_work_dir(settings, job_id)
    recipe = FinetuneRecipe(
        RecipeConfig(
            base_model_dir=artifacts.local_dir(payload["base_model_uri"]),
            prepared_dir=prepared_dir,
            work_dir=work_dir,
            hyperparameters=hyperparameters,
        )
    )
    recipe.setup()
    if recipe.is_main:
        store.emit(
            job_id,
            EventKind.LOG,
            message=f"training in {recipe.precision_mode} ({precision_reason(recipe)}); {compile_note(recipe)}",
        )
    if recipe.is_main and tracking_enabled(settings):
        reporter.mlflow_run = open_mlflow_run(settings, store, job_id, payload, recipe)
    checkpoint = latest_checkpoint(db, job_id)
    if checkpoint is not None:
        recipe.load_checkpoint(artifacts.local_dir(checkpoint.artifact.uri))
        if recipe.is_main:
            store.emit(
                job_id,
                EventKind.LOG,
                message=f"resumed from checkpoint {checkpoint.id} at step {checkpoint.step}",
            )
    try:
        state = recipe.train(reporter)
        recipe.gather_for_export()
    except StopRequested as stop:
        # A pause saves the exact state at this step; the worker then settles the job as paused.
        folder = recipe.checkpoint_to_pause(
            recipe.is_main and not reporter.must_stop() and reporter.pause_requested()
        )
        if folder is not None and recipe.is_main:
            reporter.on_checkpoint(recipe.state.step, folder)
        logger.info("job stopped", extra={"fields": {"job_id": job_id, "reason": str(stop)}})
        return EXIT_STOPPED
    finally:
        recipe.close()
        if reporter.mlflow_run is not None:
            reporter.mlflow_run.close()
    if not recipe.is_main:
        return 0
    if reporter.must_stop():
        return EXIT_STOPPED
    prepared = PreparedFolder.open(prepared_dir)
    # Jobs queued before the payload carried the base model's name name it by id.
    base_model_name = payload.get("base_model_name", payload["base_model_id"])
    # Before export(): merging the job's own model changes it in place.
    kept = kept_checkpoints(list_checkpoints(db, job_id), state.step, settings.servable_checkpoints)
    checkpoint_models = export_checkpoint_models(
        recipe,
        [(c.step, artifacts.local_dir(c.artifact.uri)) for c in kept],
        prepared.chat_template(),
        prepared.end_of_turn,
        work_dir / "outputs" / "checkpoints",
    )
    exported = export(
        recipe, prepared.chat_template(), prepared.end_of_turn, work_dir / "outputs", base_model_name
    )
    # The last chance to honour a cancel before anything is registered.
    if reporter.must_stop():
        return EXIT_STOPPED
    registry = ModelRegistry(db, artifacts)
    final_train = [r for r in state.history if r["event"] == "train"][-1]
    metrics = {
        "train_loss": final_train["loss"],
        "steps": float(state.step),
        "tokens_seen": float(state.tokens_seen),
    }
    validations = [r["validation_loss"] for r in state.history if r["event"] == "validation"]
    if validations:
        metrics["validation_loss"] = validations[-1]
        metrics["best_validation_loss"] = min(validations)
    lineage = {
        "base_model_id": payload["base_model_id"],
        "prepared_version_id": payload["prepared_version_id"],
        "job_id": job_id,
        # What it ran with: the schedule as decided, and the precision and compilation it actually ran with,
        # not "auto" (they depend on the worker's hardware).
        "hyperparameters_json": recipe.resolved_hyperparameters.to_json(),
        "code_version": code_version(),
    }
    merged_info = inspect_model_folder(exported.merged_dir)
    merged = registry.register_folder(
        name=job_model_name(job_id, MERGED),
        kind=MERGED,
        folder=exported.merged_dir,
        lineage=lineage,
        metrics=metrics,
        info=merged_info,
    )
    result = {
        "merged_model_id": merged.id,
        "metrics": metrics,
        "step": state.step,
        "total_steps": state.total_steps,
    }
    if exported.adapter_dir is not None:
        adapter_info = ModelFolderInfo(
            chat_template=merged_info.chat_template,
            eos_token=merged_info.eos_token,
            max_context=merged_info.max_context,
            parameters=exported.trainable_parameters,
        )
        adapter = registry.register_folder(
            name=job_model_name(job_id, ADAPTER),
            kind=ADAPTER,
            folder=exported.adapter_dir,
            lineage=lineage,
            metrics=metrics,
            info=adapter_info,
        )
        result["adapter_model_id"] = adapter.id
    for checkpoint in checkpoint_models:
        loss = {"train_loss": checkpoint.train_loss} if checkpoint.train_loss is not None else {}
        registry.register_folder(
            name=checkpoint_model_name(job_id, checkpoint.step),
            kind=MERGED,
            folder=checkpoint.folder,
            lineage={**lineage, "checkpoint_step": str(checkpoint.step)},
            metrics={"steps": float(checkpoint.step), **loss},
            info=merged_info,
        )
    (work_dir / RESULT_FILE).write_text(json.dumps(result))
    shutil.rmtree(work_dir / "outputs", ignore_errors=True)
    return 0


def open_mlflow_run(
    settings: TrainerSettings, store: JobStore, job_id: str, payload: dict, recipe: FinetuneRecipe
) -> JobRun:
    """The job's run on the team's MLflow server, with what it trains with and where its inputs came from."""
    spec = stored_spec(payload)
    mlflow_run = JobRun(settings, job_id, lambda message: store.emit(job_id, EventKind.LOG, message=message))
    hyperparameters = recipe.resolved_hyperparameters.model_dump(mode="json")
    tags = {
        "finetune.base_model": payload.get("base_model_name", payload["base_model_id"]),
        "finetune.base_model_id": payload["base_model_id"],
        "finetune.prepared_version_id": payload["prepared_version_id"],
        "finetune.dataset_id": str(
            PreparedFolder.open(recipe.config.prepared_dir).manifest.get("dataset_id", "")
        ),
        "finetune.code_version": code_version(),
    }
    mlflow_run.start(spec.display_name or job_id, flat_params(hyperparameters), tags)
    return mlflow_run


def precision_reason(recipe: FinetuneRecipe) -> str:
    if recipe.hp.precision:
        return "requested"
    if recipe.device.type == "cuda":
        return "GPU"
    return "this CPU computes bf16 natively" if recipe.precision == "bf16" else "this CPU has no native bf16"


def compile_note(recipe: FinetuneRecipe) -> str:
    if recipe.torch_compile:
        how = "requested" if recipe.hp.torch_compile else f"about {recipe.planned_tokens:,} tokens to train"
        return f"norms and MLPs compiled with torch.compile ({how}; the first steps wait for it)"
    if recipe.hp.torch_compile is False:
        return "eager (torch.compile off as requested)"
    return (
        "eager (torch.compile is the default only for bf16 CPU runs of at least "
        f"{TORCH_COMPILE_MIN_TOKENS:,} tokens on a worker with a C++ compiler)"
    )


def main() -> None:
    job_id, worker_id = sys.argv[1], sys.argv[2]
    settings = TrainerSettings()
    configure_logging("trainer", settings.log_level)
    # The CPUs this process may use (affinity, cgroup quota), not the host's: oversubscribed threads spin.
    configure_torch_threads(thread_count(settings.torch_threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(run(settings, job_id, worker_id))


if __name__ == "__main__":
    main()
