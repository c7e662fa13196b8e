"""Client channels: every call gets a deadline, UNAVAILABLE is retried, the request id travels along."""

import json
from collections.abc import Callable
from typing import Any

import grpc

from ftcommon.interceptors import REQUEST_ID_HEADER
from ftcommon.logs import new_request_id, request_id_var

_RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "3s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class _DeadlineAndRequestId(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, default_timeout: float) -> None:
        self.default_timeout = default_timeout

    def _details(self, details: Any, streaming_response: bool) -> Any:
        metadata = list(details.metadata or [])
        if not any(key == REQUEST_ID_HEADER for key, _ in metadata):
            metadata.append((REQUEST_ID_HEADER, request_id_var.get() or new_request_id()))
        timeout = details.timeout
        if timeout is None and not streaming_response:
            # Streams (watch calls) may live long; their callers pass a timeout explicitly.
            timeout = self.default_timeout
        return details._replace(metadata=metadata, timeout=timeout)

    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._details(details, False), request)

    def intercept_unary_stream(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._details(details, True), request)

    def intercept_stream_unary(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._details(details, False), requests)

    def intercept_stream_stream(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._details(details, True), requests)


def open_channel(address: str, default_timeout: float = 30.0) -> grpc.Channel:
    """A channel whose unary calls carry `default_timeout` unless the caller passes one."""
    channel = grpc.insecure_channel(
        address,
        options=[
            ("grpc.service_config", _RETRY_SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )
    return grpc.intercept_channel(channel, _DeadlineAndRequestId(default_timeout))
