"""The console's clients: the four services over gRPC (with the service credentials and a deadline on every
call), and a failed call turned into the error a page shows: the service's own message and the request id
that the service logged it under (the console's request id travels with every call)."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import grpc

from finetune.v1 import data_pb2_grpc, eval_pb2_grpc, registry_pb2_grpc, trainer_pb2_grpc
from ftcommon.grpc_client import open_channel
from ftcommon.logs import request_id_var
from services.console.config import ConsoleSettings

T = TypeVar("T")

# gRPC code -> the HTTP status a page answers with.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ConsoleError(Exception):
    """What a page shows when something failed: whose message it is, the message, and the request id."""

    def __init__(self, message: str, status: int = 500, service: str = "console", code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.service = service
        self.code = code
        self.request_id = request_id_var.get() or ""


def peer_failed(err: grpc.RpcError, service: str) -> ConsoleError:
    if not isinstance(err, grpc.Call):
        return ConsoleError(f"the call failed: {type(err).__name__}", 502, service)
    code = err.code()
    trailing = dict(err.trailing_metadata() or ())
    field = str(trailing.get("error-field", ""))
    details = err.details() or (code.name if code else "UNKNOWN")
    message = f"field '{field}': {details}" if field and field not in details else details
    return ConsoleError(message, _HTTP_STATUS.get(code, 502), service, code.name if code else "UNKNOWN")


class Peers:
    def __init__(self, settings: ConsoleSettings) -> None:
        timeout = settings.rpc_timeout_seconds
        self._channels = {
            name: open_channel(address, timeout, settings.security)
            for name, address in (
                ("data", settings.data_address),
                ("trainer", settings.trainer_address),
                ("eval", settings.eval_address),
            )
        }
        self.data = data_pb2_grpc.DataServiceStub(self._channels["data"])
        self.trainer = trainer_pb2_grpc.TrainerServiceStub(self._channels["trainer"])
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channels["trainer"])
        self.eval = eval_pb2_grpc.EvalServiceStub(self._channels["eval"])

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


@contextmanager
def calling(service: str) -> Iterator[None]:
    """Turns a failed gRPC call inside the block into a ConsoleError naming `service`."""
    try:
        yield
    except grpc.RpcError as err:
        raise peer_failed(err, service) from None


def call(service: str, rpc: Callable[..., T], request: object, **kwargs: object) -> T:
    with calling(service):
        return rpc(request, **kwargs)
