"""GET /v1/models (and one model): the served names plus the caller's project's fine-tuned models;
DELETE /v1/models/{model}: a fine-tuned model of the caller's project (keys with the fine-tune scope)."""

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from services.inference.fine_tuning_protocol import ModelDeleted
from services.inference.protocol import ModelCard, ModelList
from services.inference.routers.security import AnyKey, FineTuneKey, authenticate, project_of
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


@router.delete("/v1/models/{model:path}")
async def delete_model(model: str, key: FineTuneKey, state: Gateway) -> ModelDeleted:
    # The registry calls block (thread pool); unloading touches the served models (the event loop).
    model_id = await run_in_threadpool(state.fine_tuned_models.delete, project_of(key), model)
    state.manager.unload(model_id)
    return ModelDeleted(id=model)
