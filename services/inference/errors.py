"""Errors in OpenAI's JSON shape. The serving code raises ftcommon's service errors (the gRPC side maps them
to status codes); the HTTP side maps the same exceptions to statuses here."""

import json
import logging
from collections.abc import AsyncIterator

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ftcommon.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from ftcommon.logs import request_id_var
from services.inference.protocol import ErrorBody, ErrorResponse, sse

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An HTTP-only failure: authentication, rate limits, body size."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.headers = headers or {}


class GenerationTimeout(ServiceError):
    """A generation ran past the server's deadline: HTTP 504, gRPC DEADLINE_EXCEEDED."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class EngineRestarting(Unavailable):
    """The engine serving the model failed and is being rebuilt: 503 with a Retry-After estimate."""

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


_SERVICE_ERRORS: list[tuple[type[ServiceError], int, str]] = [
    (GenerationTimeout, 504, "timeout_error"),
    (InvalidArgument, 400, "invalid_request_error"),
    (NotFound, 404, "not_found_error"),
    (FailedPrecondition, 400, "invalid_request_error"),
    (ResourceExhausted, 429, "rate_limit_error"),
    (Unavailable, 503, "service_unavailable"),
]


def error_response(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=type_, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _service_error_status(exc: ServiceError) -> tuple[int, str]:
    for error_class, status, type_ in _SERVICE_ERRORS:
        if isinstance(exc, error_class):
            return status, type_
    return 500, "internal_error"


def service_error_response(exc: ServiceError) -> JSONResponse:
    status, type_ = _service_error_status(exc)
    if status == 500:
        return internal_error_response()
    headers = None
    if status in (429, 503):
        headers = {"Retry-After": str(getattr(exc, "retry_after_seconds", 1))}
    return error_response(status, exc.message, type_, exc.field or None, headers=headers)


def internal_error_message() -> str:
    return f"internal error (request id {request_id_var.get()})"


def internal_error_response() -> JSONResponse:
    return error_response(500, internal_error_message(), "internal_error")


async def events_with_errors(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """A stream that fails after its 200 went out ends with an error event in OpenAI's shape (the `openai`
    client raises it), carrying the request id, instead of a connection cut without a word."""
    try:
        async for event in events:
            yield event
    except ServiceError as exc:
        status, type_ = _service_error_status(exc)
        if status == 500:
            logger.exception("internal error while streaming")
            body = ErrorBody(message=internal_error_message(), type="internal_error")
        else:
            body = ErrorBody(message=exc.message, type=type_, param=exc.field or None, code=str(status))
        yield sse(ErrorResponse(error=body))
    except Exception:
        logger.exception("internal error while streaming")
        yield sse(ErrorResponse(error=ErrorBody(message=internal_error_message(), type="internal_error")))


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """The first problem, naming the field, or where the body stops being JSON."""
    first = exc.errors()[0]
    if first.get("type") == "json_invalid" and isinstance(exc.body, str | bytes):
        document = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else exc.body
        position = first["loc"][-1] if isinstance(first["loc"][-1], int) else 0
        problem = json.JSONDecodeError(first.get("ctx", {}).get("error", "invalid"), document, position)
        return (
            f"body is not valid JSON: {problem.msg} at line {problem.lineno} column {problem.colno}",
            None,
        )
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    return f"{param or 'body'}: {first.get('msg')}", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, code=exc.code, headers=exc.headers)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")
