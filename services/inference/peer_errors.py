"""A failed call to the data service or the trainer, as the service error the HTTP side maps to a status.

The callee's message and its `error-field` trailing metadata pass through, so a 400 still names the field or
line it was about; a service that cannot be reached becomes 503, anything else 500 with the request id.
"""

import grpc

from ftcommon.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    describe_rpc_error,
)

_BY_CODE: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: FailedPrecondition,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def peer_error(err: grpc.RpcError, service: str) -> ServiceError:
    if not isinstance(err, grpc.Call):
        return ServiceError(f"the {service} failed: {describe_rpc_error(err)}")
    error_class = _BY_CODE.get(err.code(), ServiceError)
    if error_class is Unavailable:
        return Unavailable(f"the {service} is unreachable: {describe_rpc_error(err)}")
    if error_class is ServiceError:
        return ServiceError(f"the {service} failed: {describe_rpc_error(err)}")
    trailing = dict(err.trailing_metadata() or ())
    field = str(trailing.get("error-field", ""))
    return error_class(err.details() or err.code().name, field=field)
