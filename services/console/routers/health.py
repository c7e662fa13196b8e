"""Liveness for probes: the console answers; its peers' health is theirs to report."""

from fastapi import APIRouter

router = APIRouter()


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
