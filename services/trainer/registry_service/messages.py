"""Registry records as protobuf messages, shared by RegistryService and TrainerService's registry RPCs."""

from google.protobuf.json_format import ParseDict

from finetune.v1 import registry_pb2, trainer_pb2
from ftcommon.protoconv import artifact_ref, timestamp
from services.trainer.registry import AliasRecord, AliasRevisionRecord, ModelRecord


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


def revision_message(record: AliasRevisionRecord) -> registry_pb2.AliasRevision:
    change = record.change
    message = registry_pb2.AliasRevision(
        alias=record.alias,
        revision=record.revision,
        model_id=record.model_id,
        previous_model_id=record.previous_model_id,
        action=change.action,
        actor=change.actor,
        reason=change.reason,
        gate_refusal=change.gate_refusal,
        rolled_back_to=change.rolled_back_to,
        created_at=timestamp(record.created_at),
    )
    if change.evidence:
        ParseDict(change.evidence, message.evidence)
    return message
