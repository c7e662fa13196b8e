"""/healthz (the process answers and its engines can be rebuilt), /readyz (a model is loaded and its engine
is healthy), /metrics."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.inference.state import Gateway

router = APIRouter()


@router.get("/healthz")
async def healthz(state: Gateway) -> JSONResponse:
    """Fails once an engine could not be rebuilt, so that the orchestrator restarts the gateway."""
    failure = state.manager.supervisor.failure
    if failure is not None:
        return JSONResponse({"status": "failed", "reason": failure}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(state: Gateway) -> JSONResponse:
    default = state.manager.default
    if default is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    if default.watch.lost_reason is not None:
        return JSONResponse({"status": "restarting", "reason": default.watch.lost_reason}, status_code=503)
    try:
        await default.engine.check_health()
    except Exception as exc:  # any engine failure means: do not route traffic here
        return JSONResponse({"status": "unhealthy", "reason": str(exc)}, status_code=503)
    return JSONResponse({"status": "ready", "model": default.name, "engine": default.engine.name})


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
