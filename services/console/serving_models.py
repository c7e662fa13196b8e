"""The registry through RegistryService: models with their lineage, aliases with their revision history,
and promotion, which the server gates (a refusal comes back as the registry's own message)."""

import json
from dataclasses import dataclass

from finetune.v1 import common_pb2, registry_pb2, trainer_pb2
from services.console.peers import Peers, call
from services.console.protocol import PromoteForm


@dataclass(frozen=True)
class ModelRow:
    model: trainer_pb2.Model
    kind: str
    hyperparameters: dict[str, object]


@dataclass(frozen=True)
class AliasHistory:
    alias: str
    revisions: list[registry_pb2.AliasRevision]


class ModelsServing:
    def __init__(self, peers: Peers, page_size: int) -> None:
        self.peers = peers
        self.page_size = page_size

    def page(self, page_token: str) -> tuple[list[ModelRow], str]:
        reply = call(
            "registry",
            self.peers.registry.ListModels,
            trainer_pb2.ListModelsRequest(
                page=common_pb2.PageRequest(page_size=self.page_size, page_token=page_token)
            ),
        )
        rows = [
            ModelRow(
                model,
                trainer_pb2.ModelKind.Name(model.kind).removeprefix("MODEL_KIND_").lower(),
                json.loads(model.lineage.hyperparameters_json or "{}"),
            )
            for model in reply.models
        ]
        return rows, reply.next_page_token

    def choices(self) -> list[str]:
        """What a person may name a model by: every alias and every model name (the first 200 models)."""
        rows, _ = ModelsServing(self.peers, 200).page("")
        return sorted(
            {alias for row in rows for alias in row.model.aliases} | {row.model.name for row in rows}
        )

    def alias_histories(self, rows: list[ModelRow]) -> list[AliasHistory]:
        aliases = sorted({alias for row in rows for alias in row.model.aliases})
        return [self.history(alias) for alias in aliases]

    def history(self, alias: str) -> AliasHistory:
        reply = call(
            "registry",
            self.peers.registry.ListAliasHistory,
            registry_pb2.ListAliasHistoryRequest(alias=alias, page=common_pb2.PageRequest(page_size=20)),
        )
        return AliasHistory(alias, list(reply.revisions))

    def promote(self, form: PromoteForm, actor: str) -> registry_pb2.AliasRevision:
        request = registry_pb2.PromoteRequest(
            model=form.model, alias=form.alias, eval_run_id=form.eval_run_id, actor=f"console:{actor}"
        )
        if form.reason:
            request.reason = form.reason
        return call("registry", self.peers.registry.Promote, request)

    def rollback(self, alias: str, revision: int, reason: str, actor: str) -> registry_pb2.AliasRevision:
        request = registry_pb2.RollbackRequest(
            alias=alias, revision=revision, reason=reason, actor=f"console:{actor}"
        )
        return call("registry", self.peers.registry.Rollback, request)
