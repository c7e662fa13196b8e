"""gRPC RegistryService: models, aliases with their history, and the promotion gate, checked here."""

import time
from collections.abc import Iterator

import grpc

from finetune.v1 import registry_pb2, registry_pb2_grpc, trainer_pb2
from ftcommon.errors import FailedPrecondition, InvalidArgument
from ftcommon.pagination import next_page_token, page_bounds
from ftcommon.sources import confine_local_path
from services.trainer.config import TrainerSettings
from services.trainer.registry import (
    BASE,
    FORCE,
    PROMOTE,
    REMOVED,
    ROLLBACK,
    AliasChange,
    AliasRevisionRecord,
    ModelRegistry,
)
from services.trainer.registry_service import gate
from services.trainer.registry_service.eval_runs import fetch_eval_run
from services.trainer.registry_service.messages import alias_message, model_message, revision_message

NO_EVIDENCE = "no evaluation run was given"


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, settings: TrainerSettings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry

    # Models

    def RegisterModel(self, request, context):  # noqa: N802 - gRPC method names
        if not request.name:
            raise InvalidArgument("is required", field="name")
        if not request.path:
            raise InvalidArgument("is required", field="path")
        folder = confine_local_path(request.path, self.settings.resolved_model_roots(), "path")
        if not folder.is_dir():
            raise InvalidArgument(f"{request.path} is not a model folder", field="path")
        record = self.registry.register_folder(
            name=request.name, kind=BASE, folder=folder, lineage={"source": str(folder)}
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

    def DeleteModel(self, request, context):  # noqa: N802
        if not request.model:
            raise InvalidArgument("is required", field="model")
        model = self.registry.get(request.model, field="model")
        if model.name != request.model and model.id != request.model:
            raise InvalidArgument(
                f"'{request.model}' is an alias; name the model by id or name ({model.name})", field="model"
            )
        change = AliasChange(REMOVED, actor=_actor(request.actor), reason=request.reason.strip())
        removed = self.registry.delete_model(model.id, list(request.with_aliases), change)
        return registry_pb2.DeletedModel(id=model.id, name=model.name, removed_aliases=removed)

    # Aliases

    def GetAlias(self, request, context):  # noqa: N802
        return alias_message(self.registry.get_alias(request.alias))

    def WatchAliases(self, request, context: grpc.ServicerContext) -> Iterator[trainer_pb2.Alias]:  # noqa: N802
        revision = 0
        while context.is_active():
            for record in self.registry.aliases_after(revision, request.alias):
                revision = max(revision, record.revision)
                yield alias_message(record)
            time.sleep(self.settings.alias_poll_seconds)

    def ListAliasHistory(self, request, context):  # noqa: N802
        if not request.alias:
            raise InvalidArgument("is required", field="alias")
        offset, limit = page_bounds(request.page.page_size, request.page.page_token)
        records = self.registry.alias_history(request.alias, offset, limit)
        if not records and offset == 0:
            self.registry.get_alias(request.alias)  # NOT_FOUND names the alias
        return registry_pb2.ListAliasHistoryResponse(
            revisions=[revision_message(r) for r in records],
            next_page_token=next_page_token(offset, limit, len(records)),
        )

    def Promote(self, request, context):  # noqa: N802
        return revision_message(self.promote(request))

    def Rollback(self, request, context):  # noqa: N802
        if not request.alias:
            raise InvalidArgument("is required", field="alias")
        if request.revision <= 0:
            raise InvalidArgument("name one of the alias's revisions", field="revision")
        target = self.registry.alias_revision(request.alias, request.revision)
        current = self.registry.current_model_id(request.alias)
        if current == target.model_id:
            return revision_message(
                self._latest_revision(request.alias)
            )  # a retried rollback changes nothing
        change = AliasChange(
            ROLLBACK,
            actor=_actor(request.actor),
            reason=request.reason.strip(),
            rolled_back_to=target.revision,
        )
        self.registry.set_alias(request.alias, target.model_id, change, expected_model_id=current)
        return revision_message(self._latest_revision(request.alias))

    # The gate

    def promote(self, request: registry_pb2.PromoteRequest) -> AliasRevisionRecord:
        """Moves the alias when the evidence passes the gate, or when forced with a reason (recording what the
        gate would have refused). TrainerService.SetAlias comes through here too."""
        if not request.alias:
            raise InvalidArgument("is required", field="alias")
        if not request.model:
            raise InvalidArgument("is required", field="model")
        reason = request.reason.strip()
        if request.force and not reason:
            raise InvalidArgument(
                "a forced promotion needs a reason, kept in the alias history", field="reason"
            )
        if not request.eval_run_id and not request.force:
            raise FailedPrecondition(
                "promotion needs evidence: an evaluation run that passed this model against the alias's "
                "current model, or force with a reason",
                field="eval_run_id",
            )
        self.registry.check_alias(request.alias)
        candidate = self.registry.get(request.model, field="model")
        current = self.registry.current_model_id(request.alias)
        if current == candidate.id:
            return self._latest_revision(request.alias)  # already there: a retried promotion changes nothing
        evidence: dict = {}
        refused: str | None = NO_EVIDENCE
        if request.eval_run_id:
            run = fetch_eval_run(
                self.settings.eval_address,
                request.eval_run_id,
                self.settings.eval_timeout_seconds,
                self.settings.security,
            )
            evidence = gate.evidence_of(run, candidate.id)
            required_data = request.data if request.HasField("data") else None
            refused = gate.refusal(run, candidate, request.alias, current, required_data)
            if refused and not request.force:
                raise FailedPrecondition(f"not promoted: {refused}", field="eval_run_id")
        change = AliasChange(
            FORCE if refused else PROMOTE,
            actor=_actor(request.actor),
            reason=reason,
            evidence=evidence,
            gate_refusal=refused or "",
        )
        self.registry.set_alias(request.alias, candidate.id, change, expected_model_id=current)
        return self._latest_revision(request.alias)

    def _latest_revision(self, alias: str) -> AliasRevisionRecord:
        return self.registry.alias_history(alias, 0, 1)[0]


def _actor(declared: str) -> str:
    return declared.strip()[:200] or "unknown"
