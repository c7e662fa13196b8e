"""GET /v1/models (and one model): the served names plus the caller's project's fine-tuned models."""

from fastapi import APIRouter, Depends

from services.inference.protocol import ModelCard, ModelList
from services.inference.routers.security import AnyKey, authenticate, project_of
from services.inference.state import Gateway

router = APIRouter(dependencies=[Depends(authenticate)])


# Plain `def` routes: the fine-tuned models come from the gateway's database.
@router.get("/v1/models")
def list_models(key: AnyKey, state: Gateway) -> ModelList:
    served = state.models.list()
    return ModelList(data=[*served.data, *state.fine_tuned_models.cards(project_of(key))])


@router.get("/v1/models/{model:path}")
def retrieve_model(model: str, key: AnyKey, state: Gateway) -> ModelCard:
    served = next((card for card in state.models.list().data if card.id == model), None)
    return served or state.fine_tuned_models.card(project_of(key), model)
