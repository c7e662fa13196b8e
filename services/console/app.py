"""The console's FastAPI application: routers, templates, static files, request ids and error pages.

Every page shows a failure the same way: whose message it is (the console or a service), the message, and
the request id that the console sent along and the service logged."""

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftcommon.interceptors import REQUEST_ID_HEADER
from ftcommon.logs import new_request_id, request_id_var
from services.console.pages import render
from services.console.peers import ConsoleError
from services.console.routers import (
    auth,
    datasets,
    evaluations,
    health,
    keys,
    models,
    playground,
    training,
)
from services.console.security import Forbidden, SignInRequired
from services.console.state import ConsoleState

STATIC_DIR = Path(__file__).parent / "static"
logger = logging.getLogger(__name__)


class RequestIdMiddleware:
    """One request id per request, in the logs, on every gRPC call (open_channel reads it) and in the reply."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "") or request.url.path.startswith("/api/")


def _error(request: Request, error: ConsoleError) -> Response:
    if _wants_json(request):
        body = {
            "error": error.message,
            "service": error.service,
            "code": error.code,
            "request_id": error.request_id,
        }
        return JSONResponse(body, status_code=error.status)
    return render(request, "error.html", {"error": error}, status_code=error.status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SignInRequired)
    async def sign_in_required(request: Request, _: SignInRequired) -> Response:
        if _wants_json(request) or request.method != "GET":
            return JSONResponse({"error": "sign in first"}, status_code=401)
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, err: Forbidden) -> Response:
        return _error(request, ConsoleError(err.message, 403))

    @app.exception_handler(ConsoleError)
    async def console_error(request: Request, err: ConsoleError) -> Response:
        return _error(request, err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        # Unknown paths and methods get the console's own page (with the request id), not a bare JSON body.
        message = "no such page" if err.status_code == 404 else str(err.detail)
        return _error(request, ConsoleError(message, err.status_code))

    @app.exception_handler(RequestValidationError)
    async def invalid_form(request: Request, err: RequestValidationError) -> Response:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part not in ("body", "query"))
        message = str(first["msg"]).removeprefix("Value error, ")
        return _error(request, ConsoleError(f"field '{where}': {message}" if where else message, 400))

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> Response:
        logger.exception("internal error")
        return _error(request, ConsoleError("internal error in the console; its log has the details", 500))


def create_app(state: ConsoleState) -> FastAPI:
    app = FastAPI(title="finetune console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = state
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for module in (health, auth, datasets, training, evaluations, models, playground, keys):
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    return app
