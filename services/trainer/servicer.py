"""gRPC TrainerService: the model registry and training jobs (run by workers, see worker.py)."""

import json
import time

import grpc
from sqlalchemy import and_, select

from finetune.v1 import trainer_pb2, trainer_pb2_grpc
from ftcommon.db import Database
from ftcommon.errors import InvalidArgument
from ftcommon.jobs import EventKind, Job, JobState, JobStore
from ftcommon.pagination import next_page_token, page_bounds
from ftcommon.protoconv import artifact_ref, job_event, job_status, timestamp
from ftcommon.sources import confine_local_path
from services.trainer import tables
from services.trainer.checkpoints import list_checkpoints
from services.trainer.config import TrainerSettings
from services.trainer.hyperparameters import from_proto, from_stored
from services.trainer.job_queue import JOB_KIND
from services.trainer.prepared_versions import resolve_prepared_version
from services.trainer.registry import ADAPTER, BASE, AliasRecord, ModelRecord, ModelRegistry
from services.trainer.schedule import plan


def model_message(record: ModelRecord) -> trainer_pb2.Model:
    lineage = trainer_pb2.Lineage(
        **{k: v for k, v in record.lineage.items() if k in trainer_pb2.Lineage.DESCRIPTOR.fields_by_name}
    )
    return trainer_pb2.Model(
        id=record.id,
        name=record.name,
        kind=record.kind,
        artifact=artifact_ref(record.artifact),
        lineage=lineage,
        metrics=record.metrics,
        aliases=record.aliases,
        chat_template=record.chat_template,
        eos_token=record.eos_token,
        max_context=record.max_context,
        parameters=record.parameters,
        created_at=timestamp(record.created_at),
    )


def alias_message(record: AliasRecord) -> trainer_pb2.Alias:
    return trainer_pb2.Alias(
        alias=record.alias,
        model_id=record.model_id,
        revision=record.revision,
        updated_at=timestamp(record.updated_at),
    )


class RegistryServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, settings: TrainerSettings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry

    def RegisterBaseModel(self, request, context):  # noqa: N802 - gRPC method names
        if not request.name:
            raise InvalidArgument("is required", field="name")
        if not request.path:
            raise InvalidArgument("is required", field="path")
        folder = confine_local_path(request.path, self.settings.resolved_model_roots(), "path")
        if not folder.is_dir():
            raise InvalidArgument(f"{request.path} is not a model folder", field="path")
        record = self.registry.register_folder(
            name=request.name,
            kind=BASE,
            folder=folder,
            lineage={"source": str(folder)},
        )
        return model_message(record)

    def GetModel(self, request, context):  # noqa: N802
        if not request.name:
            raise InvalidArgument("is required", field="name")
        return model_message(self.registry.get(request.name))

    def ListModels(self, request, context):  # noqa: N802
        offset, limit = page_bounds(request.page.page_size, request.page.page_token)
        records = self.registry.list_models(request.kind or None, offset, limit)
        return trainer_pb2.ListModelsResponse(
            models=[model_message(r) for r in records],
            next_page_token=next_page_token(offset, limit, len(records)),
        )

    def SetAlias(self, request, context):  # noqa: N802
        if not request.model:
            raise InvalidArgument("is required", field="model")
        return alias_message(self.registry.set_alias(request.alias, request.model))

    def GetAlias(self, request, context):  # noqa: N802
        return alias_message(self.registry.get_alias(request.alias))

    def WatchAliases(self, request, context: grpc.ServicerContext):  # noqa: N802
        revision = 0
        while context.is_active():
            for record in self.registry.aliases_after(revision, request.alias):
                revision = max(revision, record.revision)
                yield alias_message(record)
            time.sleep(self.settings.alias_poll_seconds)


class TrainerServicer(RegistryServicer):
    """Adds training jobs to the registry RPCs. Jobs only queue here; workers run them."""

    def __init__(
        self,
        settings: TrainerSettings,
        registry: ModelRegistry,
        db: Database,
        store: JobStore,
        data_address: str,
    ) -> None:
        super().__init__(settings, registry)
        self.db = db
        self.store = store
        self.data_address = data_address

    def CreateJob(self, request, context):  # noqa: N802
        if not request.base_model:
            raise InvalidArgument("is required", field="base_model")
        if request.idempotency_key:
            existing = self.store.find_by_idempotency_key(request.idempotency_key)
            if existing:
                return self._job_message(existing)
        hyperparameters = from_proto(request.hyperparameters)
        base = self.registry.get(request.base_model, field="base_model")
        if base.kind == ADAPTER:
            # Base and merged models are complete model folders; an adapter needs its base to load.
            raise InvalidArgument(f"'{request.base_model}' is an adapter, not a model", field="base_model")
        version = resolve_prepared_version(
            self.data_address,
            request.prepared_version_id,
            self.settings.data_timeout_seconds,
            self.settings.security,
        )
        if version.base_model_id and version.base_model_id != base.id:
            raise InvalidArgument(
                f"was tokenized for model {version.base_model_id}, not {base.id}; prepare it for this model",
                field="prepared_version_id",
            )
        # Decided here, not in the worker, so the job records (and the caller sees) what it will run.
        schedule = plan(hyperparameters, version.train_rows, validation_rows=version.validation_rows)
        payload = {
            "base_model_id": base.id,
            "base_model_name": base.name,
            "base_model_uri": base.artifact.uri,
            "prepared_version_id": version.id,
            "prepared_uri": version.artifact_uri,
            "hyperparameters": schedule.hyperparameters.model_dump(),
            "planned_total_steps": schedule.total_steps,
            "chosen_defaults": schedule.chosen_defaults,
            "display_name": request.display_name,
        }
        job = self.store.create(JOB_KIND, payload, request.idempotency_key or None)
        for sentence in schedule.chosen_defaults:
            self.store.emit(job.id, EventKind.LOG, message=f"default chosen: {sentence}")
        return self._job_message(job)

    def GetJob(self, request, context):  # noqa: N802
        return self._job_message(self._get(request.id))

    def ListJobs(self, request, context):  # noqa: N802
        offset, limit = page_bounds(request.page.page_size, request.page.page_token)
        state = JobState(request.state) if request.state else None
        jobs = self.store.list_jobs(state, offset, limit, kind=JOB_KIND)
        return trainer_pb2.ListJobsResponse(
            jobs=[self._job_message(j) for j in jobs],
            next_page_token=next_page_token(offset, limit, len(jobs)),
        )

    def CancelJob(self, request, context):  # noqa: N802
        self._get(request.id)
        return self._job_message(self.store.request_cancel(request.id))

    def WatchJob(self, request, context: grpc.ServicerContext):  # noqa: N802
        self._get(request.id)
        if request.after_index < 0:
            raise InvalidArgument("must not be negative", field="after_index")
        for event in self.store.watch(request.id, request.after_index, context.is_active):
            yield job_event(event)

    def ListCheckpoints(self, request, context):  # noqa: N802
        self._get(request.id)
        return trainer_pb2.ListCheckpointsResponse(
            checkpoints=[
                trainer_pb2.Checkpoint(
                    id=c.id,
                    job_id=c.job_id,
                    step=c.step,
                    artifact=artifact_ref(c.artifact),
                    created_at=timestamp(c.created_at),
                )
                for c in list_checkpoints(self.db, request.id)
            ]
        )

    # Internals

    def _get(self, job_id: str) -> Job:
        if not job_id:
            raise InvalidArgument("is required", field="id")
        job = self.store.get(job_id)
        if job.kind != JOB_KIND:
            raise InvalidArgument(f"{job_id} is not a training job", field="id")
        return job

    def _job_message(self, job: Job) -> trainer_pb2.TrainingJob:
        payload = job.payload
        progress = self._latest_train_step(job.id)
        metrics = {k: v for k, v in progress.items() if k not in ("step", "total_steps")}
        metrics.update(job.result.get("metrics", {}))
        return trainer_pb2.TrainingJob(
            status=job_status(job),
            base_model_id=payload["base_model_id"],
            prepared_version_id=payload["prepared_version_id"],
            hyperparameters=from_stored(payload["hyperparameters"]).to_proto(),
            display_name=payload.get("display_name", ""),
            step=int(job.result.get("step", progress.get("step", 0))),
            total_steps=int(
                job.result.get(
                    "total_steps", progress.get("total_steps", payload.get("planned_total_steps", 0))
                )
            ),
            metrics=metrics,
            adapter_model_id=job.result.get("adapter_model_id", ""),
            merged_model_id=job.result.get("merged_model_id", ""),
            chosen_defaults=payload.get("chosen_defaults", []),
        )

    def _latest_train_step(self, job_id: str) -> dict[str, float]:
        events = tables.job_events
        query = (
            select(events.c.metrics)
            .where(and_(events.c.job_id == job_id, events.c.kind == int(EventKind.TRAIN_STEP)))
            .order_by(events.c.idx.desc())
            .limit(1)
        )
        with self.db.begin() as conn:
            row = conn.execute(query).scalar()
        return json.loads(row) if row else {}
