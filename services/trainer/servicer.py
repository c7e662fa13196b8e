"""gRPC TrainerService: the model registry part. Jobs are added by the training-execution work."""

import time
from pathlib import Path

import grpc

from finetune.v1 import trainer_pb2, trainer_pb2_grpc
from ftcommon.errors import InvalidArgument
from ftcommon.pagination import next_page_token, page_bounds
from ftcommon.protoconv import artifact_ref, timestamp
from services.trainer.config import TrainerSettings
from services.trainer.registry import BASE, AliasRecord, ModelRecord, ModelRegistry


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
        folder = Path(request.path).resolve()
        roots = [Path(r).resolve() for r in self.settings.model_roots]
        if roots and not any(folder.is_relative_to(root) for root in roots):
            raise InvalidArgument(f"{folder} is outside the allowed model roots", field="path")
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
