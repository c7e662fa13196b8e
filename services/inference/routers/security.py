"""The dependencies routes take: a valid Bearer key within its rate limit and with the route's scope (/v1),
an admin token (/admin)."""

from typing import Annotated

from fastapi import Depends, Request

from services.inference import metrics
from services.inference.auth import AdminToken, ApiKey
from services.inference.errors import ApiError
from services.inference.state import Gateway


def _bearer(request: Request) -> str:
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""


def require_admin(request: Request, state: Gateway) -> AdminToken:
    """Always on, also when API keys are not required: admin routes hand out credentials."""
    secret = _bearer(request)
    token = state.admin_tokens.authenticate(secret) if secret else None
    if token is None:
        metrics.REJECTED.labels("unauthorized").inc()
        raise ApiError(
            401,
            "Incorrect or missing admin token: pass it as 'Authorization: Bearer <token>' (ftctl reads "
            "FT_ADMIN_TOKEN or --admin-token). The gateway's operator creates one on the gateway's host with "
            "`python -m services.inference.keys bootstrap`.",
            "invalid_request_error",
            code="invalid_admin_token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.api_key_id = token.id
    return token


def authenticate(request: Request, state: Gateway) -> ApiKey | None:
    """The caller's key, whatever its scopes (None when the gateway requires no keys)."""
    if not state.settings.require_api_key:
        return None
    secret = _bearer(request)
    key = state.keys.authenticate(secret) if secret else None
    if key is None:
        metrics.REJECTED.labels("unauthorized").inc()
        raise ApiError(
            401,
            "Incorrect or missing API key: pass it as 'Authorization: Bearer <key>'. `ftctl keys create` prints "
            "one to export as FT_API_KEY (that needs an admin token in FT_ADMIN_TOKEN).",
            "invalid_request_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    limit = key.rate_limit_per_minute or state.settings.rate_limit_per_minute
    wait = state.limiter.retry_after(key.id, limit)
    if wait:
        metrics.REJECTED.labels("rate_limited").inc()
        raise ApiError(
            429,
            f"Rate limit of {limit} requests per minute reached for this key; retry in {wait} s.",
            "rate_limit_error",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(wait)},
        )
    request.state.api_key_id = key.id
    return key


def _require_scope(key: ApiKey | None, scope: str) -> ApiKey | None:
    if key is not None and not key.allows(scope):
        metrics.REJECTED.labels("forbidden").inc()
        raise ApiError(
            403,
            f"This API key ({key.prefix}...) lacks the '{scope}' scope (it has: {', '.join(key.scopes)}). "
            f"An admin creates a key with it: `ftctl keys create --name NAME --scope {scope}`.",
            "permission_error",
            code="insufficient_scope",
        )
    return key


def require_key(key: Annotated[ApiKey | None, Depends(authenticate)]) -> ApiKey | None:
    """Chat and completions."""
    return _require_scope(key, "chat")


def require_fine_tune(key: Annotated[ApiKey | None, Depends(authenticate)]) -> ApiKey | None:
    """/v1/files and /v1/fine_tuning."""
    return _require_scope(key, "fine-tune")


def project_of(key: ApiKey | None) -> str:
    """Whose files and jobs the caller sees; one shared project when the gateway requires no keys."""
    return key.project if key is not None else ""


FineTuneKey = Annotated[ApiKey | None, Depends(require_fine_tune)]
AnyKey = Annotated[ApiKey | None, Depends(authenticate)]
