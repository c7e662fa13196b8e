"""GET /v1/models."""

from fastapi import APIRouter, Depends

from services.inference.protocol import ModelList
from services.inference.routers.security import require_key
from services.inference.state import Gateway

router = APIRouter(dependencies=[Depends(require_key)])


@router.get("/v1/models")
async def list_models(state: Gateway) -> ModelList:
    return state.models.list()
