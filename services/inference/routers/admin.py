"""/admin/keys: manage API keys with an admin token (`ftctl keys` calls these)."""

from fastapi import APIRouter, Depends

from services.inference.protocol import (
    ApiKeyCreateRequest,
    ApiKeyInfo,
    ApiKeyList,
    ApiKeyUsageList,
    CreatedApiKey,
)
from services.inference.routers.security import require_admin
from services.inference.state import Gateway

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


# Plain `def` routes: the key store's database calls block, so FastAPI runs them in its thread pool.
@router.post("/keys")
def create_key(body: ApiKeyCreateRequest, state: Gateway) -> CreatedApiKey:
    return state.key_admin.create(body)


@router.get("/keys")
def list_keys(state: Gateway) -> ApiKeyList:
    return state.key_admin.list()


@router.get("/keys/usage")
def key_usage(state: Gateway) -> ApiKeyUsageList:
    return state.key_admin.usage()


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: str, state: Gateway) -> ApiKeyInfo:
    return state.key_admin.revoke(key_id)
