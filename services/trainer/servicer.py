"""gRPC TrainerService: the model registry and training jobs (run by workers, see worker.py)."""

import json

import grpc
from sqlalchemy import and_, select

from finetune.v1 import registry_pb2, trainer_pb2, trainer_pb2_grpc
from ftcommon.db import Database
from ftcommon.errors import InvalidArgument
from ftcommon.jobs import EventKind, Job, JobState, JobStore
from ftcommon.pagination import next_page_token, page_bounds
from ftcommon.protoconv import artifact_ref, job_event, job_status, timestamp
from ftcommon.specs.train import TrainSpec
from services.trainer import tables
from services.trainer.checkpoints import list_checkpoints
from services.trainer.config import TrainerSettings
from services.trainer.job_queue import JOB_KIND
from services.trainer.job_spec import SPEC_KEY, spec_payload, stored_spec
from services.trainer.model_export import ModelExporter
from services.trainer.prepared_versions import resolve_prepared_version
from services.trainer.registry import ADAPTER, ModelRegistry
from services.trainer.registry_service.servicer import RegistryServicer
from services.trainer.schedule import plan


class TrainerRegistryRpcs(trainer_pb2_grpc.TrainerServiceServicer):
    """TrainerService's registry RPCs, kept for the clients that use them: each is RegistryService's own,
    so SetAlias goes through the same promotion gate as RegistryService.Promote."""

    def __init__(self, settings: TrainerSettings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.registry_service = RegistryServicer(settings, registry)

    def RegisterBaseModel(self, request, context):  # noqa: N802 - gRPC method names
        return self.registry_service.RegisterModel(request, context)

    def GetModel(self, request, context):  # noqa: N802
        return self.registry_service.GetModel(request, context)

    def ListModels(self, request, context):  # noqa: N802
        return self.registry_service.ListModels(request, context)

    def SetAlias(self, request, context):  # noqa: N802
        if not request.model:
            raise InvalidArgument("is required", field="model")
        revision = self.registry_service.promote(
            registry_pb2.PromoteRequest(
                model=request.model,
                alias=request.alias,
                eval_run_id=request.eval_run_id,
                force=request.force,
                reason=request.reason,
                actor=request.actor,
            )
        )
        return self.registry_service.GetAlias(trainer_pb2.GetAliasRequest(alias=revision.alias), context)

    def GetAlias(self, request, context):  # noqa: N802
        return self.registry_service.GetAlias(request, context)

    def ExportModel(self, request, context):  # noqa: N802
        exporter = ModelExporter(self.settings, self.registry)
        plan = exporter.plan(request)  # bad input fails before the first chunk
        yield from exporter.chunks(plan)

    def WatchAliases(self, request, context: grpc.ServicerContext):  # noqa: N802
        return self.registry_service.WatchAliases(request, context)


class TrainerServicer(TrainerRegistryRpcs):
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
        spec = TrainSpec.from_request(request)
        if request.idempotency_key:
            existing = self.store.find_by_idempotency_key(request.idempotency_key)
            if existing:
                return self._job_message(existing)
        base = self.registry.get(spec.base_model, field="base_model")
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
        if spec.hyperparameters.method == "dpo" and not version.preference_pairs:
            raise InvalidArgument(
                f"prepared version {version.id} holds no preference pairs; method dpo trains on a version "
                "prepared from a preference dataset ({prompt | messages, chosen, rejected} or OpenAI's format)",
                field="prepared_version_id",
            )
        # Decided here, not in the worker, so the job records (and the caller sees) what it will run.
        schedule = plan(spec.hyperparameters, version.train_rows, validation_rows=version.validation_rows)
        payload = {
            "base_model_id": base.id,
            "base_model_name": base.name,
            "base_model_uri": base.artifact.uri,
            "prepared_version_id": version.id,
            "prepared_uri": version.artifact_uri,
            SPEC_KEY: spec_payload(spec.model_copy(update={"hyperparameters": schedule.hyperparameters})),
            "planned_total_steps": schedule.total_steps,
            "chosen_defaults": schedule.chosen_defaults,
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

    def PauseJob(self, request, context):  # noqa: N802
        self._get(request.id)
        return self._job_message(self.store.request_pause(request.id))

    def ResumeJob(self, request, context):  # noqa: N802
        self._get(request.id)
        return self._job_message(self.store.resume(request.id))

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
                    model_id=getattr(self.registry.checkpoint_model(c.job_id, c.step), "id", ""),
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
        spec = stored_spec(payload)
        progress = self._latest_train_step(job.id)
        metrics = {k: v for k, v in progress.items() if k not in ("step", "total_steps")}
        metrics.update(job.result.get("metrics", {}))
        return trainer_pb2.TrainingJob(
            status=job_status(job),
            base_model_id=payload["base_model_id"],
            prepared_version_id=payload["prepared_version_id"],
            hyperparameters=spec.hyperparameters.to_proto(include_defaults=True),
            display_name=spec.display_name,
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
