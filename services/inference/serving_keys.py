"""/admin/keys: API keys created, listed and revoked over HTTP, so no client opens the gateway's database."""

from services.inference.auth import ApiKey, KeyStore
from services.inference.protocol import ApiKeyCreateRequest, ApiKeyInfo, ApiKeyList, CreatedApiKey


class KeyAdministration:
    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    def create(self, request: ApiKeyCreateRequest) -> CreatedApiKey:
        key, secret = self.keys.create(
            request.name, request.rate_limit_per_minute, tuple(request.scopes), request.project
        )
        return CreatedApiKey(**_info(key).model_dump(), secret=secret)

    def list(self) -> ApiKeyList:
        return ApiKeyList(data=[_info(key) for key in self.keys.list()])

    def revoke(self, key_id: str) -> ApiKeyInfo:
        return _info(self.keys.revoke(key_id))


def _info(key: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        rate_limit_per_minute=key.rate_limit_per_minute,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        scopes=list(key.scopes),
        project=key.project,
    )
