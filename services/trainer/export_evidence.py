"""What an exported model card says beyond the registry: data lineage from the data service and the latest
evaluation verdict from the eval service, both over gRPC (the trainer never reads their tables).

Either service may be down or may not know the model; the card is still written, and says what is missing
and why instead of leaving it out silently.
"""

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import grpc

from finetune.v1 import common_pb2, data_pb2, data_pb2_grpc, eval_pb2, eval_pb2_grpc
from ftcommon.grpc_client import open_channel
from ftcommon.settings import TransportSecurity

logger = logging.getLogger(__name__)

# Reports read per export when looking for the model's evaluation; the newest runs come first.
RECENT_RUNS_SCANNED = 20


@dataclass(frozen=True)
class DataLineage:
    prepared_version_id: str
    dataset_id: str = ""
    dataset_name: str = ""
    template: str = ""
    max_seq_len: int = 0
    split_examples: dict[str, int] = field(default_factory=dict)
    refusal_rows: int = 0
    missing: str = ""  # why the data service could not say more


@dataclass(frozen=True)
class Evaluation:
    run_id: str
    finished_at: str
    label: str  # the model's label in the run
    baseline: str
    verdict: str
    reasons: list[str]
    rule: dict[str, Any]
    data: dict[str, Any]
    # metric -> {"mean", "low", "high", "n"} for the model and the baseline
    summaries: dict[str, dict[str, Any]]
    baseline_summaries: dict[str, dict[str, Any]]
    # metric -> {"delta": {"mean", "low", "high"}, "wins", "losses", ...} against the baseline
    comparisons: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class EvaluationLookup:
    evaluation: Evaluation | None
    note: str  # what was searched and, when nothing was found, why


def data_lineage(
    address: str, prepared_version_id: str, timeout: float, security: TransportSecurity
) -> DataLineage:
    if not prepared_version_id:
        return DataLineage("", missing="the registry records no prepared version for this model")
    try:
        with open_channel(address, default_timeout=timeout, security=security) as channel:
            stub = data_pb2_grpc.DataServiceStub(channel)
            version = stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=prepared_version_id))
            dataset = stub.GetDataset(data_pb2.GetDatasetRequest(id=version.dataset_id))
    except grpc.RpcError as err:
        logger.warning("data lineage unavailable", extra={"fields": {"code": err.code().name}})
        return DataLineage(
            prepared_version_id,
            missing=f"the data service at {address} did not describe it ({err.code().name})",
        )
    request = version.request
    return DataLineage(
        prepared_version_id=prepared_version_id,
        dataset_id=version.dataset_id,
        dataset_name=dataset.name,
        template=data_pb2.PromptTemplate.Name(request.template).removeprefix("PROMPT_TEMPLATE_").lower(),
        max_seq_len=request.max_seq_len,
        split_examples={name: stats.examples for name, stats in sorted(version.split_stats.items())},
        refusal_rows=version.refusal_rows,
    )


def latest_evaluation(
    address: str, model_ids: set[str], timeout: float, security: TransportSecurity
) -> EvaluationLookup:
    """The newest succeeded run that evaluated one of `model_ids` as a candidate (not as the baseline)."""
    try:
        with open_channel(address, default_timeout=timeout, security=security) as channel:
            stub = eval_pb2_grpc.EvalServiceStub(channel)
            runs = stub.ListRuns(
                eval_pb2.ListRunsRequest(
                    state=common_pb2.JOB_STATE_SUCCEEDED,
                    page=common_pb2.PageRequest(page_size=RECENT_RUNS_SCANNED),
                )
            ).runs
            for run in runs:
                report = stub.GetReport(eval_pb2.GetRunRequest(id=run.status.id))
                evaluation = _evaluation_of(json.loads(report.report_json), model_ids, report)
                if evaluation is not None:
                    return EvaluationLookup(evaluation, f"run {evaluation.run_id} of the eval service")
    except grpc.RpcError as err:
        logger.warning("evaluation evidence unavailable", extra={"fields": {"code": err.code().name}})
        return EvaluationLookup(None, f"the eval service at {address} could not be asked ({err.code().name})")
    return EvaluationLookup(
        None, f"none of the eval service's {len(runs)} most recent succeeded runs evaluated this model"
    )


def _evaluation_of(
    report: dict[str, Any], model_ids: set[str], message: eval_pb2.EvalReport
) -> Evaluation | None:
    labels = [m["label"] for m in report["models"][1:] if m["model_id"] in model_ids]
    if not labels:
        return None
    label = labels[-1]
    verdict = report["verdicts"][label]
    baseline = report["baseline"]
    return Evaluation(
        run_id=report["run_id"],
        finished_at=message.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M UTC"),
        label=label,
        baseline=baseline,
        verdict=verdict["verdict"],
        reasons=list(verdict["reasons"]),
        rule=report.get("rule", {}),
        data=report.get("settings", {}).get("data", {}),
        summaries=report["summaries"].get(label, {}),
        baseline_summaries=report["summaries"].get(baseline, {}),
        comparisons=report.get("comparisons", {}).get(label, {}),
    )
