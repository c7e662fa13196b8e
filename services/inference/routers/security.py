"""The dependency every /v1 route takes: a valid Bearer key within its rate limit."""

from fastapi import Request

from services.inference import metrics
from services.inference.auth import ApiKey
from services.inference.errors import ApiError
from services.inference.state import Gateway


def require_key(request: Request, state: Gateway) -> ApiKey | None:
    if not state.settings.require_api_key:
        return None
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    key = state.keys.authenticate(secret.strip()) if scheme.lower() == "bearer" and secret else None
    if key is None:
        metrics.REJECTED.labels("unauthorized").inc()
        raise ApiError(
            401,
            "Incorrect or missing API key: pass it as 'Authorization: Bearer <key>' (create one with `ftctl keys create`).",
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
