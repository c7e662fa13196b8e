"""Server interceptors: service credentials, then request id, access log, Prometheus metrics and error
mapping for every RPC."""

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from ftcommon.errors import ServiceError, describe_rpc_error
from ftcommon.logs import log_fields, new_request_id, request_id_var

REQUEST_ID_HEADER = "x-request-id"
AUTHORIZATION_HEADER = "authorization"
# Probes (kubelet's gRPC probe, the compose healthcheck) carry no credentials, and health tells only
# SERVING or not. Everything else, reflection included, needs the token.
OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})
UNAUTHENTICATED_DETAILS = (
    "missing or wrong service credentials: send metadata 'authorization: Bearer <token>' "
    "with the token the service was given (FT_SERVICE_TOKEN)"
)

RPC_TOTAL = Counter("grpc_server_handled_total", "RPCs handled", ["service", "method", "code"])
RPC_SECONDS = Histogram("grpc_server_handling_seconds", "RPC handling time", ["service", "method"])

logger = logging.getLogger("ftcommon.rpc")


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and value:
            return str(value)
    return new_request_id()


def bearer(token: str) -> str:
    return f"Bearer {token}"


def _digest(value: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison's time independent of the token's length too.
    return hashlib.sha256(value.encode()).digest()


class ServiceTokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call but health with UNAUTHENTICATED unless it carries the shared service token."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the service token must not be empty")
        self._expected = _digest(bearer(token))

    def _authorized(self, metadata: Any) -> bool:
        presented = [str(value) for key, value in metadata or () if key == AUTHORIZATION_HEADER]
        return len(presented) == 1 and hmac.compare_digest(_digest(presented[0]), self._expected)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler], details: Any
    ) -> grpc.RpcMethodHandler | None:
        service = details.method.split("/")[1] if details.method.count("/") == 2 else ""
        if service in OPEN_SERVICES or self._authorized(details.invocation_metadata):
            return continuation(details)
        handler = continuation(details)
        return None if handler is None else _refusal(handler, details.method)


def _refusal(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only answers UNAUTHENTICATED."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        log_fields(
            logger, logging.WARNING, "unauthenticated call refused", method=method, peer=context.peer()
        )
        context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)

    def refuse_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        refuse(request, context)
        yield from ()

    make = {
        "unary_unary": (grpc.unary_unary_rpc_method_handler, refuse),
        "unary_stream": (grpc.unary_stream_rpc_method_handler, refuse_stream),
        "stream_unary": (grpc.stream_unary_rpc_method_handler, refuse),
        "stream_stream": (grpc.stream_stream_rpc_method_handler, refuse_stream),
    }
    for kind, (factory, behaviour) in make.items():
        if getattr(handler, kind):
            return factory(behaviour, handler.request_deserializer, handler.response_serializer)
    raise ValueError(f"{method}: a handler of no known kind")


class ServerInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler], details: Any
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        _, service, method = details.method.split("/") if details.method.count("/") == 2 else ("", "", "")
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, service, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, service, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, service, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, service, method),
            handler.request_deserializer,
            handler.response_serializer,
        )

    def _wrap_unary(self, behaviour: Callable, service: str, method: str) -> Callable:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            token, started = self._begin(context)
            code = grpc.StatusCode.OK
            try:
                return behaviour(request, context)
            except Exception as exc:
                code, details = _status(exc, context)
                if details is None:
                    raise
                # A unary call must end by aborting: returning None would make grpc try to serialize it.
                context.abort(code, details)
            finally:
                self._end(token, started, service, method, code, context)

        return wrapped

    def _wrap_stream(self, behaviour: Callable, service: str, method: str) -> Callable:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            token, started = self._begin(context)
            code = grpc.StatusCode.OK
            try:
                yield from behaviour(request, context)
            except Exception as exc:
                code, details = _status(exc, context)
                if details is not None:
                    context.set_code(code)
                    context.set_details(details)
            finally:
                self._end(token, started, service, method, code, context)

        return wrapped

    @staticmethod
    def _begin(context: grpc.ServicerContext) -> tuple[Any, float]:
        request_id = _request_id(context)
        context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
        return request_id_var.set(request_id), time.perf_counter()

    @staticmethod
    def _end(
        token: Any, started: float, service: str, method: str, code: grpc.StatusCode, context: Any
    ) -> None:
        elapsed = time.perf_counter() - started
        if code == grpc.StatusCode.OK and context.code() is not None:
            code = context.code()
        RPC_TOTAL.labels(service, method, code.name).inc()
        RPC_SECONDS.labels(service, method).observe(elapsed)
        log_fields(
            logger,
            logging.INFO,
            "rpc",
            method=f"{service}/{method}",
            code=code.name,
            ms=round(elapsed * 1000, 1),
        )
        request_id_var.reset(token)


def _status(exc: Exception, context: grpc.ServicerContext) -> tuple[grpc.StatusCode, str | None]:
    """Turns an exception into a status and its details; the caller never sees a stack trace.
    Details are None when the servicer already aborted (grpc signals that with an exception)."""
    if isinstance(exc, ServiceError):
        context.set_trailing_metadata(exc.trailing_metadata())
        return exc.code, exc.details()
    if context.code() not in (None, grpc.StatusCode.OK):
        return context.code(), None
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        # A call this handler made to another service failed and nothing handled it.
        logger.warning("a call to another service failed", exc_info=True)
        waiting = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        code = grpc.StatusCode.UNAVAILABLE if exc.code() in waiting else grpc.StatusCode.INTERNAL
        return code, (
            f"a call to another service failed: {describe_rpc_error(exc)} (request id {request_id_var.get()})"
        )
    logger.exception("internal error")
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id_var.get()})"
