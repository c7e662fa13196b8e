"""Errors in OpenAI's JSON shape. The serving code raises ftcommon's service errors (the gRPC side maps them
to status codes); the HTTP side maps the same exceptions to statuses here."""

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
from services.inference.protocol import ErrorBody, ErrorResponse


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


_SERVICE_ERRORS: list[tuple[type[ServiceError], int, str]] = [
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


def service_error_response(exc: ServiceError) -> JSONResponse:
    for error_class, status, type_ in _SERVICE_ERRORS:
        if isinstance(exc, error_class):
            headers = {"Retry-After": "1"} if status in (429, 503) else None
            return error_response(status, exc.message, type_, exc.field or None, headers=headers)
    return internal_error_response()


def internal_error_response() -> JSONResponse:
    return error_response(500, f"internal error (request id {request_id_var.get()})", "internal_error")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, code=exc.code, headers=exc.headers)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        return error_response(400, f"{param}: {first.get('msg')}", "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")
