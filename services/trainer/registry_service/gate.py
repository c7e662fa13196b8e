"""The promotion gate: is an evaluation run evidence that a model may take an alias?

It is, when the run succeeded, evaluated the model as a candidate against the model the alias points at now
(for an alias not yet set: against the candidate's own base model), on the data the caller names if any,
and the promotion rule passed every candidate entry of that model. The run's ids are those the eval service
resolved when it ran, so a run against an older `prod` is stale even if it named `prod`.
"""

from typing import Any

from google.protobuf.json_format import MessageToDict

from finetune.v1 import common_pb2, eval_pb2
from services.trainer.registry import ModelRecord

DEFAULT_SPLIT = "test"  # EvalData's default split


def evidence_of(run: eval_pb2.EvalRun, candidate_id: str) -> dict[str, Any]:
    """What the run says about the candidate, as the history records it (finetune.v1.PromotionEvidence)."""
    entries = [v for v in run.candidate_verdicts if v.model_id == candidate_id]
    failed = [v for v in entries if v.verdict != eval_pb2.VERDICT_PASS]
    shown = (failed or entries)[:1]
    return {
        "eval_run_id": run.status.id,
        "baseline_model_id": run.baseline_model_id,
        "candidate": shown[0].model if shown else "",
        "data": MessageToDict(run.request.data, preserving_proto_field_name=True),
        "verdict": eval_pb2.Verdict.Name(shown[0].verdict) if shown else "VERDICT_UNSPECIFIED",
        "verdict_reasons": list(shown[0].reasons) if shown else [],
    }


def refusal(
    run: eval_pb2.EvalRun,
    candidate: ModelRecord,
    alias: str,
    current_model_id: str | None,
    required_data: eval_pb2.EvalData | None,
) -> str | None:
    """Why the run is not evidence for pointing `alias` at `candidate`; None when it is."""
    run_id = run.status.id
    if run.status.state != common_pb2.JOB_STATE_SUCCEEDED:
        state = common_pb2.JobState.Name(run.status.state).removeprefix("JOB_STATE_").lower()
        return f"evaluation run {run_id} is {state}, not succeeded"
    entries = [v for v in run.candidate_verdicts if v.model_id == candidate.id]
    if not entries:
        return f"evaluation run {run_id} did not evaluate model {candidate.id} as a candidate"
    if current_model_id:
        if run.baseline_model_id != current_model_id:
            return (
                f"evaluation run {run_id} compared model {candidate.id} against {run.baseline_model_id}, but "
                f"'{alias}' now points at {current_model_id}: evaluate against the alias's current model"
            )
    else:
        base_model_id = candidate.lineage.get("base_model_id", "")
        if not base_model_id:
            return (
                f"'{alias}' is not set and model {candidate.id} has no base model it could have been "
                "compared against"
            )
        if run.baseline_model_id != base_model_id:
            return (
                f"'{alias}' is not set, so the candidate must be compared against its base model "
                f"{base_model_id}; evaluation run {run_id} compared it against {run.baseline_model_id}"
            )
    if required_data is not None and _data_key(run.request.data) != _data_key(required_data):
        return (
            f"evaluation run {run_id} evaluated on {_describe(run.request.data)}, "
            f"not on {_describe(required_data)}"
        )
    for entry in entries:
        if entry.verdict != eval_pb2.VERDICT_PASS:
            verdict = eval_pb2.Verdict.Name(entry.verdict).removeprefix("VERDICT_")
            return f"evaluation run {run_id}'s verdict for {entry.model} is {verdict}: " + "; ".join(
                entry.reasons
            )
    return None


def _data_key(data: eval_pb2.EvalData) -> tuple[str, str, str]:
    source = data.WhichOneof("source") or ""
    value = getattr(data, source) if source else ""
    split = (data.split or DEFAULT_SPLIT) if source == "prepared_version_id" else ""
    return source, value, split


def _describe(data: eval_pb2.EvalData) -> str:
    source, value, split = _data_key(data)
    if source == "prepared_version_id":
        return f"prepared version {value} ({split} split)"
    if source == "dataset_id":
        return f"dataset {value}"
    return "no named data"
