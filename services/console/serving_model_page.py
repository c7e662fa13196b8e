"""One model's page: its lineage followed through the services that own each piece (the registry for the
base model, the data service for the prepared version and its dataset, the trainer for the job, the eval
service for the runs that judged it) and the revision history of the aliases that name it. A piece that
cannot be fetched is shown with its service's message instead of failing the page."""

import json
from dataclasses import dataclass, field
from typing import Any

from finetune.v1 import common_pb2, data_pb2, eval_pb2, trainer_pb2
from services.console.peers import ConsoleError, Peers, call
from services.console.serving_models import AliasHistory, ModelsServing

RUN_PAGES_SCANNED = 4  # evaluations are found by scanning the newest runs: 4 pages of 50
RUN_PAGE_SIZE = 50


@dataclass(frozen=True)
class Judged:
    run: eval_pb2.EvalRun
    role: str  # baseline | candidate
    verdict: int  # the candidate's own verdict; 0 for the baseline


@dataclass
class ModelPage:
    model: trainer_pb2.Model
    kind: str
    hyperparameters: dict[str, Any]
    base: trainer_pb2.Model | None = None
    version: data_pb2.PreparedVersion | None = None
    dataset: data_pb2.Dataset | None = None
    job: trainer_pb2.TrainingJob | None = None
    evaluations: list[Judged] = field(default_factory=list)
    histories: list[AliasHistory] = field(default_factory=list)
    problems: list[ConsoleError] = field(default_factory=list)  # lineage pieces that could not be read


class ModelPageServing:
    def __init__(self, peers: Peers) -> None:
        self.peers = peers
        self.models = ModelsServing(peers, RUN_PAGE_SIZE)

    def page(self, reference: str) -> ModelPage:
        model = call("registry", self.peers.registry.GetModel, trainer_pb2.GetModelRequest(name=reference))
        page = ModelPage(
            model=model,
            kind=trainer_pb2.ModelKind.Name(model.kind).removeprefix("MODEL_KIND_").lower(),
            hyperparameters=json.loads(model.lineage.hyperparameters_json or "{}"),
        )
        lineage = model.lineage

        def fetch(action: Any) -> Any:
            try:
                return action()
            except ConsoleError as problem:
                page.problems.append(problem)
                return None

        if lineage.base_model_id:
            page.base = fetch(
                lambda: call(
                    "registry",
                    self.peers.registry.GetModel,
                    trainer_pb2.GetModelRequest(name=lineage.base_model_id),
                )
            )
        if lineage.prepared_version_id:
            page.version = fetch(
                lambda: call(
                    "data service",
                    self.peers.data.GetPreparedVersion,
                    data_pb2.GetPreparedVersionRequest(id=lineage.prepared_version_id),
                )
            )
        if page.version is not None:
            dataset_id = page.version.dataset_id
            page.dataset = fetch(
                lambda: call(
                    "data service", self.peers.data.GetDataset, data_pb2.GetDatasetRequest(id=dataset_id)
                )
            )
        if lineage.job_id:
            page.job = fetch(
                lambda: call(
                    "trainer", self.peers.trainer.GetJob, trainer_pb2.GetJobRequest(id=lineage.job_id)
                )
            )
        page.evaluations = fetch(lambda: self._evaluations(model.id)) or []
        page.histories = [
            history for alias in model.aliases if (history := fetch(lambda a=alias: self.models.history(a)))
        ]
        return page

    def _evaluations(self, model_id: str) -> list[Judged]:
        found: list[Judged] = []
        token = ""
        for _ in range(RUN_PAGES_SCANNED):
            reply = call(
                "eval service",
                self.peers.eval.ListRuns,
                eval_pb2.ListRunsRequest(
                    state=common_pb2.JOB_STATE_SUCCEEDED,
                    page=common_pb2.PageRequest(page_size=RUN_PAGE_SIZE, page_token=token),
                ),
            )
            for run in reply.runs:
                candidates = [c for c in run.candidate_verdicts if c.model_id == model_id]
                if candidates:
                    found.append(Judged(run, "candidate", candidates[0].verdict))
                elif run.baseline_model_id == model_id:
                    found.append(Judged(run, "baseline", 0))
            token = reply.next_page_token
            if not token:
                break
        return found
