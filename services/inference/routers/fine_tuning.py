"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints; keys with the
fine-tune scope."""

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from ftcommon.errors import InvalidArgument
from services.inference.fine_tuning_protocol import (
    CheckpointList,
    EventList,
    FineTuningJob,
    JobCreateRequest,
    JobList,
)
from services.inference.routers.security import FineTuneKey, project_of, require_fine_tune
from services.inference.state import Gateway

router = APIRouter(prefix="/v1/fine_tuning/jobs", dependencies=[Depends(require_fine_tune)])


# Plain `def` routes: the database and gRPC calls block, so FastAPI runs them in its thread pool.
@router.post("")
def create_job(body: JobCreateRequest, key: FineTuneKey, state: Gateway) -> FineTuningJob:
    return state.fine_tuning.create(project_of(key), body)


@router.get("")
def list_jobs(
    request: Request,
    key: FineTuneKey,
    state: Gateway,
    after: str | None = None,
    limit: Annotated[int, Query()] = 20,
) -> JobList:
    return state.fine_tuning.list(project_of(key), after, limit, _metadata_filter(request))


@router.get("/{job_id}")
def retrieve_job(job_id: str, key: FineTuneKey, state: Gateway) -> FineTuningJob:
    return state.fine_tuning.get(project_of(key), job_id)


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, key: FineTuneKey, state: Gateway) -> FineTuningJob:
    return state.fine_tuning.cancel(project_of(key), job_id)


@router.post("/{job_id}/pause")
def pause_job(job_id: str, key: FineTuneKey, state: Gateway) -> FineTuningJob:
    return state.fine_tuning.pause(project_of(key), job_id)


@router.post("/{job_id}/resume")
def resume_job(job_id: str, key: FineTuneKey, state: Gateway) -> FineTuningJob:
    return state.fine_tuning.resume(project_of(key), job_id)


@router.get("/{job_id}/events")
def list_events(
    job_id: str,
    key: FineTuneKey,
    state: Gateway,
    after: str | None = None,
    limit: Annotated[int, Query()] = 20,
) -> EventList:
    return state.fine_tuning.events(project_of(key), job_id, after, limit)


@router.get("/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str,
    key: FineTuneKey,
    state: Gateway,
    after: str | None = None,
    limit: Annotated[int, Query()] = 10,
) -> CheckpointList:
    return state.fine_tuning.checkpoints(project_of(key), job_id, after, limit)


def _metadata_filter(request: Request) -> dict[str, str]:
    """OpenAI's client sends `metadata[key]=value`; a JSON object in `metadata` is taken too."""
    found = {
        name[len("metadata[") : -1]: value
        for name, value in request.query_params.multi_items()
        if name.startswith("metadata[") and name.endswith("]")
    }
    if raw := request.query_params.get("metadata"):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidArgument("must be metadata[key]=value pairs or a JSON object", field="metadata")
        found.update({str(k): str(v) for k, v in parsed.items()})
    return found
