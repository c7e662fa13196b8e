"""Exceptions a servicer raises; the error interceptor maps them to gRPC status codes.

Anything else becomes INTERNAL with only the request id sent to the caller.
"""

import grpc


class ServiceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, field: str = "", row: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.row = row

    def details(self) -> str:
        where = []
        if self.field:
            where.append(f"field '{self.field}'")
        if self.row is not None:
            where.append(f"line {self.row}")
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        meta: list[tuple[str, str]] = []
        if self.field:
            meta.append(("error-field", self.field))
        if self.row is not None:
            meta.append(("error-row", str(self.row)))
        return tuple(meta)


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


def describe_rpc_error(err: grpc.RpcError) -> str:
    """A failed call to another service in one line ("UNAVAILABLE: failed to connect ..."): str() of a
    grpc error is a multi-line repr with debug_error_string, never fit for a caller or a job's error."""
    if isinstance(err, grpc.Call):
        code = err.code()
        return f"{code.name if code else 'UNKNOWN'}: {err.details() or 'no details'}"
    return type(err).__name__
