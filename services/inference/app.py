"""The FastAPI application: routers, OpenAI-shaped errors, CORS (closed unless configured) and one ASGI
middleware for request ids, the body size limit, metrics and access logs (never prompts or answers)."""

import logging
import time

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftcommon.interceptors import REQUEST_ID_HEADER
from ftcommon.logs import log_fields, new_request_id, request_id_var
from services.inference import metrics
from services.inference.errors import (
    ApiError,
    error_response,
    install_error_handlers,
    internal_error_response,
)
from services.inference.routers import admin, chat, completions, files, fine_tuning, health, models
from services.inference.state import GatewayState

access_logger = logging.getLogger("services.inference.access")
logger = logging.getLogger(__name__)


FILE_UPLOAD_PATH = "/v1/files"


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, max_request_bytes: int, max_file_bytes: int | None = None) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.max_file_bytes = max_file_bytes or max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get(REQUEST_ID_HEADER) or new_request_id()
        token = request_id_var.set(request_id)
        tokens = metrics.RequestTokens()
        tokens_token = metrics.request_tokens_var.set(tokens)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        try:
            if scope["method"] == "POST" and scope["path"] == FILE_UPLOAD_PATH:
                # File uploads stream through (the route spools them to disk) under their own, larger limit.
                await self.app(scope, _counted(receive, self.max_file_bytes), send_with_id)
                return
            body = await self._read_limited(receive)
            if body is None:
                response = error_response(
                    413,
                    f"The request body is larger than {self.max_request_bytes} bytes.",
                    "invalid_request_error",
                    code="request_too_large",
                )
                await response(scope, receive, send_with_id)
                return
            await self.app(scope, _replay(body, receive), send_with_id)
        except Exception:
            # Here, not in an app exception handler: those run outside this middleware, where the request
            # id is gone. A response already under way can only be cut; the log line keeps the id.
            logger.exception("internal error")
            if not response_started:
                await internal_error_response()(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            route_path = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - started
            metrics.HTTP_REQUESTS.labels(route_path, str(status)).inc()
            metrics.HTTP_LATENCY.labels(route_path).observe(elapsed)
            state = scope.get("state", {})
            if key_id := state.get("api_key_id", ""):
                metrics.KEY_REQUESTS.labels(key_id, "ok" if status < 400 else "failed").inc()
                metrics.KEY_LAST_USED.labels(key_id).set_to_current_time()
                metrics.KEY_TOKENS.labels(key_id, "prompt").inc(tokens.prompt)
                metrics.KEY_TOKENS.labels(key_id, "completion").inc(tokens.completion)
            log_fields(
                access_logger,
                logging.INFO,
                "http",
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round(elapsed * 1000, 1),
                key_id=state.get("api_key_id", ""),
            )
            metrics.request_tokens_var.reset(tokens_token)
            request_id_var.reset(token)

    async def _read_limited(self, receive: Receive) -> bytes | None:
        """The whole body, or None when it passes the limit (read no further)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _counted(receive: Receive, limit: int) -> Receive:
    """The body as it arrives, refused with a 413 once it passes `limit`."""
    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise ApiError(
                    413,
                    f"The file is larger than {limit} bytes.",
                    "invalid_request_error",
                    code="file_too_large",
                )
        return message

    return counted


def _replay(body: bytes, receive: Receive) -> Receive:
    """Hands the buffered body to the app, then the real channel (so disconnects still arrive)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def create_app(state: GatewayState) -> FastAPI:
    app = FastAPI(title="finetune-platform inference gateway", docs_url=None, redoc_url=None)
    app.state.gateway = state
    install_error_handlers(app)
    for router in (
        chat.router,
        completions.router,
        models.router,
        health.router,
        admin.router,
        files.router,
        fine_tuning.router,
    ):
        app.include_router(router)
    if state.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=state.settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(
        GatewayMiddleware,
        max_request_bytes=state.settings.max_request_bytes,
        max_file_bytes=state.settings.max_file_bytes,
    )
    return app
